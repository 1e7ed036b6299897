"""Pictures written during training: the progress grid (fixed inputs and codes, so grids of different
steps compare), the z-sensitivity check on it (and, for observers that ask, the oracle's numbers), and
the final grids (z from the prior and from the aggregate posterior) with the oracle's mode counts."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bicycle.config import RunConfig
from bicycle.data.base import oracle_of
from bicycle.inference.metrics import z_sensitivity
from bicycle.inference.mixture import GaussianMixture
from bicycle.inference.posterior import draw_codes
from bicycle.nets import Nets
from bicycle.inference.sample import distinct_valid_modes, sample_grid
from bicycle.train.collapse import CollapseMonitor

GRID_INPUTS, GRID_SAMPLES = 4, 6
# z-sensitivity (bicycle.inference.metrics.z_sensitivity) below this after 10% of training: G is ignoring z.
Z_SENSITIVITY_WARNING = 0.1
HEALTH_AFTER = 0.1
FINAL_INPUTS, FINAL_SAMPLES = 8, 20
FINAL_GRIDS = {"prior": "final.png", "auto": "final_auto.png"}
FINAL_SOURCE_WORDS = {"prior": "from the prior", "auto": "from the aggregate posterior, the default sampler"}


def _eval_mode(nets: Nets, on: bool) -> None:
    for _, m in nets.items():
        m.train(not on)


@dataclass
class GridWrite:
    """What :meth:`ProgressGrids.write` made: the PNG, a one-time warning, and (when asked for) the grid
    as uint8 [H, W, 3] and its measures (``bicycle_train_sample``)."""

    path: Path
    warning: str | None = None
    image: np.ndarray | None = None
    measures: dict[str, float] = field(default_factory=dict)


class ProgressGrids:
    """The first ``GRID_INPUTS`` pairs of ``val`` with ``GRID_SAMPLES`` codes from ``seed + 1``: one PNG per
    :meth:`write`, and the z-sensitivity of its outputs, warned about once when G ignores z."""

    def __init__(self, val, nz: int, seed: int, sample_dir: Path, total_steps: int,
                 collapse: CollapseMonitor | None = None) -> None:
        """``collapse``: also watch for posterior collapse at every grid (models with an encoder)."""
        self.collapse = collapse
        self.n = min(GRID_INPUTS, len(val))
        self.a, self.b = val.get_batch(list(range(self.n)))
        self.z = torch.randn(self.n, GRID_SAMPLES, nz, generator=torch.Generator().manual_seed(seed + 1))
        self.oracle = oracle_of(val)
        self.sample_dir, self.total = sample_dir, total_steps
        self.history: list[tuple[int, float]] = []
        self.warned = False

    def write(self, nets: Nets, step: int, device: torch.device, *, image: bool = False,
              measures: bool = False) -> GridWrite:
        """Write the grid of ``step``. ``image``/``measures``: also return the picture and the measures
        ("z_sensitivity"; with an oracle "valid_rate", "modes_per_input"), which cost host work."""
        _eval_mode(nets, True)
        picture, outs = sample_grid(nets, self.a.to(device), self.b.to(device), self.z.to(device))
        collapse = self.collapse.check(nets, step, device) if self.collapse is not None and nets.E is not None else None
        _eval_mode(nets, False)
        out = GridWrite(self.sample_dir / f"step_{step:08d}.png", collapse)
        picture.save(out.path)
        if image:
            out.image = np.asarray(picture)  # uint8 [H, W, 3]
            out.image.setflags(write=False)
        oracle = self.oracle if measures else None
        if self.n < 2 and oracle is None:
            return out
        outs = outs.float().cpu()  # [n, GRID_SAMPLES, Cb, S, S]
        if self.n >= 2:
            sens = z_sensitivity(outs)
            self.history.append((step, round(sens, 4)))
            if measures:
                out.measures["z_sensitivity"] = sens
            out.warning = "\n".join(w for w in (out.warning, self._warning(step, sens)) if w) or None
        if oracle is not None:
            distinct, valid = distinct_valid_modes(oracle, self.a, outs)
            out.measures.update(valid_rate=float(valid.float().mean()), modes_per_input=float(distinct.float().mean()))
        return out

    def _warning(self, step: int, sens: float) -> str | None:
        if step < HEALTH_AFTER * self.total or sens >= Z_SENSITIVITY_WARNING or self.warned:
            return None
        self.warned = True
        return (f"warning: G is ignoring z (z-sensitivity {sens:.3f} < {Z_SENSITIVITY_WARNING} at step "
                f"{step}): outputs for different z barely differ; expect mode collapse")


def final_report(cfg: RunConfig, nets: Nets, val, sample_dir: Path, device: torch.device,
                 echo: Callable[[str], None], posterior: GaussianMixture | None = None) -> dict:
    """Final grids (8 inputs x 20 samples) and, with an oracle, distinct valid modes per input: z from the prior
    (``final.png``, the paper's protocol) and, when the run has one, from its aggregate posterior
    (``final_auto.png``: what ``bicycle sample`` and the demo page draw by default), under ``"auto"``."""
    n = min(FINAL_INPUTS, len(val))
    a, b = val.get_batch(list(range(n)))
    codes = {"prior": torch.randn(n, FINAL_SAMPLES, cfg.net.nz, generator=torch.Generator().manual_seed(cfg.train.seed + 2))}
    if posterior is not None:
        codes["auto"] = draw_codes(posterior, n, FINAL_SAMPLES, cfg.net.nz, cfg.train.seed + 2)
    oracle = oracle_of(val)
    _eval_mode(nets, True)
    report: dict = {}
    for source, z in codes.items():
        image, outs = sample_grid(nets, a.to(device), b.to(device), z.to(device))
        path = sample_dir / FINAL_GRIDS[source]
        image.save(path)
        words = FINAL_SOURCE_WORDS[source]
        echo(f"samples: {path} (a row per input: the input, ground truth, encoded, {FINAL_SAMPLES} z {words})")
        part: dict = {"final_grid": str(path)}
        if oracle is not None:
            distinct, valid = distinct_valid_modes(oracle, a, outs.cpu())
            at_least_3 = int((distinct >= 3).sum())
            echo(f"oracle: valid rate {valid.float().mean():.2f}; distinct valid modes per input {distinct.tolist()} "
                 f"(of {oracle.num_modes}); {at_least_3}/{n} inputs show >= 3 modes (z {words})")
            part.update({"valid_rate": round(float(valid.float().mean()), 4), "modes_per_input": distinct.tolist(),
                         "inputs_with_3_modes": at_least_3, "inputs": n, "samples_per_input": FINAL_SAMPLES})
        if source == "prior":
            report.update(part)
        else:
            report[source] = part
    return report
