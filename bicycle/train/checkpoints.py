"""Checkpoint files of a run: ``checkpoints/step_XXXXXXXX.safetensors`` (weights, optimizer state,
config, data position), the ``latest`` pointer, and pruning to the newest few."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from bicycle.config import RunConfig
from bicycle.io import save_checkpoint, write_latest
from bicycle.train.state import TrainState


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    files = sorted(folder.glob("step_*.safetensors"))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


@contextlib.contextmanager
def host_lrs(optimizers: dict[str, torch.optim.Optimizer]) -> Iterator[None]:
    """Temporarily show float lrs in the param groups (for state_dict / JSON checkpoints); the very
    same tensors are put back, so a captured graph keeps reading them."""
    saved = []
    for opt in optimizers.values():
        for group in opt.param_groups:
            if isinstance(group["lr"], Tensor):
                saved.append((group, group["lr"]))
                group["lr"] = float(group["lr"])
    try:
        yield
    finally:
        for group, t in saved:
            group["lr"] = t


def write_checkpoint(folder: Path, cfg: RunConfig, state: TrainState, step: int, data_position: tuple[int, int],
                     metadata: dict[str, str] | None = None, tensors: dict[str, Tensor] | None = None) -> Path:
    """Save ``state`` after ``step`` steps (``data_position``: (epoch, batch within epoch) of the next
    batch; ``metadata``: more string entries, e.g. the data manifest), point ``latest`` at it and prune
    to ``cfg.train.keep_checkpoints``. Returns the file."""
    epoch, offset = data_position
    meta = {**(metadata or {}), "data_epoch": str(epoch), "data_offset": str(offset)}
    with host_lrs(state.optimizers):  # the graphed step keeps lrs as device tensors
        path = save_checkpoint(folder / checkpoint_name(step), cfg, state.nets, step, state.optimizers, meta, tensors)
    write_latest(folder, path.name)
    prune(folder, cfg.train.keep_checkpoints)
    return path
