"""An exponential moving average of G's and E's weights (``--ema DECAY``), the networks a run samples with.

After every optimizer step, inside the (captured) step: ``avg <- avg + w_t * (live - avg)`` for every floating
parameter and buffer, ``w_t = 1 - min(decay, (1 + t) / (10 + t))`` at step t (a warm-up: the first steps follow
the live weights closely, so an early checkpoint's average is not the initialisation). ``w_t`` is a device tensor
refilled outside the graph before each step (:meth:`WeightAverage.set_step`), as the learning rates are.
Checkpoints store the averages as ``ema.G.*`` and ``ema.E.*``; every rank of a torchrun job holds the same
averages, since the live weights agree after each step.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bicycle.errors import CheckpointError
from bicycle.io import EMA_PREFIX, Checkpoint, has_average, load_average
from bicycle.nets import Nets

AVERAGED = ("G", "E")


def decay_at(decay: float, step: int) -> float:
    """The decay used at 0-based ``step``: ``min(decay, (1 + step) / (10 + step))``."""
    return min(decay, (1 + step) / (10 + step))


def _floating(module: nn.Module) -> list[Tensor]:
    return [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]


class WeightAverage:
    """The averages of ``nets``' G and E (E when the model has one), on their device, gradient-free."""

    def __init__(self, nets: Nets, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.nets = Nets(G=self._copy(nets.G), E=self._copy(nets.E) if nets.E is not None else None)
        live = [m for name, m in nets.items() if name in AVERAGED]
        self._live = [t for m in live for t in _floating(m)]
        self._avg = [t for _, m in self.nets.items() for t in _floating(m)]
        self.weight = torch.zeros((), device=self._live[0].device)  # w_t, read inside the step

    @staticmethod
    def _copy(module: nn.Module) -> nn.Module:
        avg = copy.deepcopy(module).eval()
        avg.requires_grad_(False)
        return avg

    def set_step(self, step: int) -> None:
        """The weight of the update that follows 0-based ``step`` (outside any graph: ``fill_`` with a host scalar)."""
        self.weight.fill_(1.0 - decay_at(self.decay, step))

    @torch.no_grad()
    def update(self) -> None:
        """avg += w_t * (live - avg), one fused call over every tensor (capture-safe: no host read)."""
        torch._foreach_lerp_(self._avg, self._live, self.weight)

    def tensors(self) -> dict[str, Tensor]:
        """The averages as checkpoint tensors: ``ema.G.<key>``, ``ema.E.<key>``."""
        return {f"{EMA_PREFIX}{name}.{k}": v.detach().cpu().contiguous()
                for name, m in self.nets.items() for k, v in m.state_dict().items()}

    def load(self, ckpt: Checkpoint) -> None:
        """The averages stored in ``ckpt`` (a run that averages always stores them)."""
        if not has_average(ckpt):
            raise CheckpointError(f"{ckpt.path} holds no moving averages (ema.G.*), but its config asks for them "
                                  f"(train.ema {self.decay})")
        load_average(ckpt, self.nets)
