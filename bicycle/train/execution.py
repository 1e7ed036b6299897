"""How a training step executes, without changing its mathematics: CUDA graphs or eager, fp32 or
bf16 autocast (+ channels_last), torch.compile."""
from __future__ import annotations

import contextlib

import torch

from bicycle.ops import check_cuda_graphs
from bicycle.errors import ConfigError

CPU_EAGER_MESSAGE = "eager (CUDA graphs need a CUDA device)"


def use_cuda_graphs(setting: bool | None, device: torch.device) -> tuple[bool, str | None]:
    """(capture?, a one-time message or None). None means: on for CUDA, eager elsewhere (and say so)."""
    check_cuda_graphs(setting, device)
    if setting is None:
        if device.type == "cuda":
            return True, None
        return False, CPU_EAGER_MESSAGE
    return bool(setting), None


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}")


def memory_format(precision: str) -> torch.memory_format:
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def prepare_networks(nets, precision: str = "fp32", compile: bool = False) -> None:
    """In place: channels_last for bf16; ``nn.Module.compile`` (state-dict keys unchanged) when asked."""
    for _, m in nets.items():
        if precision == "bf16":
            m.to(memory_format=torch.channels_last)
        if compile:
            m.compile()
