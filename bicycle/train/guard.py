"""Divergence guard: the first training step whose losses are not finite, noticed without a host sync.

:meth:`DivergenceGuard.record` runs at the end of every step (inside the captured CUDA graph too):
device-side tensors count the steps and keep the number, the loss values and which losses were not
finite at the first bad step. The loop reads them on the host only at log and checkpoint time
(:meth:`DivergenceGuard.first_bad`), stops the run and writes no checkpoint after it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Divergence:
    step: int
    losses: dict[str, float]  # the non-finite ones at that step, by name
    what: str = "loss"

    def describe(self) -> str:
        bad = ", ".join(f"{k} = {v}" for k, v in self.losses.items())
        return f"training diverged at step {self.step}: non-finite {self.what}" + (f" ({bad})" if bad else "")


class DivergenceGuard:
    """Device state: ``steps`` (int64, steps done), ``first`` (int64, the first bad step or -1), and at that
    step the losses' values and a non-finite mask, in the order of ``names`` (fixed at the first record)."""

    def __init__(self, device: torch.device | str, start_step: int = 0) -> None:
        self.device = torch.device(device)
        self.steps = torch.full((), start_step, dtype=torch.int64, device=self.device)
        self.first = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.names: list[str] | None = None
        self.values: Tensor | None = None
        self.bad: Tensor | None = None

    def reset(self, start_step: int) -> None:
        """Outside any graph: count from ``start_step`` (a resumed run), nothing bad seen."""
        self.steps.fill_(start_step)
        self.first.fill_(-1)

    def record(self, metrics: dict[str, Tensor]) -> None:
        """After one step: 0-dim losses ``metrics``. Capture-safe (in-place device ops, no host read)."""
        if self.names is None:  # the first call is an eager step: allocate outside any graph
            self.names = sorted(metrics)
            self.values = torch.zeros(len(self.names), device=self.device)
            self.bad = torch.zeros(len(self.names), dtype=torch.bool, device=self.device)
        assert self.values is not None and self.bad is not None
        vals = torch.stack([metrics[k].detach().float() for k in self.names])
        bad = ~torch.isfinite(vals)
        self.steps.add_(1)
        new = (self.first < 0) & bad.any()
        self.first.copy_(torch.where(new, self.steps, self.first))
        self.values.copy_(torch.where(new, vals, self.values))
        self.bad.copy_(torch.where(new, bad, self.bad))

    def first_bad(self) -> Divergence | None:
        """The first non-finite step so far, or None (one small host read)."""
        step = int(self.first)
        if step < 0 or self.names is None:
            return None
        assert self.values is not None and self.bad is not None
        values, bad = self.values.tolist(), self.bad.tolist()
        return Divergence(step, {k: v for k, v, b in zip(self.names, values, bad) if b})
