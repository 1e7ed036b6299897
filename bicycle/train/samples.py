"""Pictures written during training: the progress grid (fixed inputs and codes, so grids of different
steps compare), the z-sensitivity check on it, and the final grid with the oracle's mode count."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bicycle.config import RunConfig
from bicycle.data.base import oracle_of
from bicycle.metrics import z_sensitivity
from bicycle.nets import Nets
from bicycle.sample import distinct_valid_modes, sample_grid

GRID_INPUTS, GRID_SAMPLES = 4, 6
# z-sensitivity (bicycle.metrics.z_sensitivity) below this after 10% of training: G is ignoring z.
Z_SENSITIVITY_WARNING = 0.1
HEALTH_AFTER = 0.1
FINAL_INPUTS, FINAL_SAMPLES = 8, 20


def _eval_mode(nets: Nets, on: bool) -> None:
    for _, m in nets.items():
        m.train(not on)


class ProgressGrids:
    """The first ``GRID_INPUTS`` pairs of ``val`` with ``GRID_SAMPLES`` codes from ``seed + 1``: one PNG per
    :meth:`write`, and the z-sensitivity of its outputs, warned about once when G ignores z."""

    def __init__(self, val, nz: int, seed: int, sample_dir: Path, total_steps: int) -> None:
        self.n = min(GRID_INPUTS, len(val))
        self.a, self.b = val.get_batch(list(range(self.n)))
        self.z = torch.randn(self.n, GRID_SAMPLES, nz, generator=torch.Generator().manual_seed(seed + 1))
        self.sample_dir, self.total = sample_dir, total_steps
        self.history: list[tuple[int, float]] = []
        self.warned = False

    def write(self, nets: Nets, step: int, device: torch.device) -> tuple[Path, str | None]:
        """(the grid's path, a one-time warning or None)."""
        _eval_mode(nets, True)
        image, outs = sample_grid(nets, self.a.to(device), self.b.to(device), self.z.to(device))
        _eval_mode(nets, False)
        path = self.sample_dir / f"step_{step:08d}.png"
        image.save(path)
        if self.n < 2:
            return path, None
        sens = z_sensitivity(outs.float().cpu())
        self.history.append((step, round(sens, 4)))
        if step >= HEALTH_AFTER * self.total and sens < Z_SENSITIVITY_WARNING and not self.warned:
            self.warned = True
            return path, (f"warning: G is ignoring z (z-sensitivity {sens:.3f} < {Z_SENSITIVITY_WARNING} at step "
                          f"{step}): outputs for different z barely differ; expect mode collapse")
        return path, None


def final_report(cfg: RunConfig, nets: Nets, val, sample_dir: Path, device: torch.device,
                 echo: Callable[[str], None]) -> dict:
    """Final grid (8 inputs x 20 samples) and, with an oracle, distinct valid modes per input."""
    n = min(FINAL_INPUTS, len(val))
    a, b = val.get_batch(list(range(n)))
    z = torch.randn(n, FINAL_SAMPLES, cfg.net.nz, generator=torch.Generator().manual_seed(cfg.train.seed + 2))
    _eval_mode(nets, True)
    image, outs = sample_grid(nets, a.to(device), b.to(device), z.to(device))
    path = sample_dir / "final.png"
    image.save(path)
    echo(f"samples: {path} (a row per input: the input, ground truth, encoded, {FINAL_SAMPLES} random z)")
    oracle = oracle_of(val)
    if oracle is None:
        return {"final_grid": str(path)}
    distinct, valid = distinct_valid_modes(oracle, a, outs.cpu())
    at_least_3 = int((distinct >= 3).sum())
    echo(f"oracle: valid rate {valid.float().mean():.2f}; distinct valid modes per input {distinct.tolist()} "
         f"(of {oracle.num_modes}); {at_least_3}/{n} inputs show >= 3 modes")
    return {"final_grid": str(path), "valid_rate": round(float(valid.float().mean()), 4),
            "modes_per_input": distinct.tolist(), "inputs_with_3_modes": at_least_3, "inputs": n,
            "samples_per_input": FINAL_SAMPLES}
