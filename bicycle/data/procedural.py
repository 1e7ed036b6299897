"""``procedural:N``: a family of paired tasks, task N drawn from the seed N, each with an exact oracle.

A task is the kind of problem a user brings (an outline or edge map in, a photograph-like coloured
region out, several plausible colourings per input), drawn at random so that no default can be tuned
to it. Task N fixes, from ``numpy.random.default_rng([TASK_SALT, N])``:

- the input kind: ``silhouette`` (the filled shape), ``outline`` (its boundary, 1-4 px wide at 128 px,
  scaled with the image size), or ``edges`` (a 1-px boundary at 128 px, broken by gaps covering 3-12% of
  it and displaced by up to 1 px per angular sector, as an edge detector's output);
- 2-8 fill colours and 1-4 background colours, uniform in RGB (mid-tones included), every pair of the
  task's colours at least ``MIN_DISTANCE`` = 64 levels of 255 apart in some channel;
- p(mode), a mode being a (fill, background) pair: uniform, a product of two Dirichlet(1) draws (fill x
  background), or one Dirichlet(1) over all pairs; the last two mixed with 10% uniform;
- the shape kinds (a non-empty subset of ellipse, rectangle, triangle; all convex) and the range of the
  shape's area, within 4-25% of the image;
- per-pixel Gaussian noise in B, sigma 0-8 levels, and with probability 1/2 smooth shading: a linear
  ramp of 4-16 levels amplitude across the image, in its own direction for each region and sample.
B is stored as 8-bit levels (``round``, clipped to 0-255) as a photograph would be.

Sizes: ``TRAIN_LENGTH`` = 3,000 training pairs and ``VAL_LENGTH`` = 500 validation pairs, at any image
size; a pair is a function of (N, split, index) only (the training seed does not change the data).

Oracle (``bicycle eval``), given A and B, in levels of 255 (``t`` = max(3 sigma, 8), the pixel tolerance):
- the region: the convex hull of A's drawn pixels (its extent in ``HULL_DIRECTIONS`` = 48 directions),
  which recovers a convex shape from its silhouette, outline or gapped edges alike; a band of
  max(1, S // 64) px on both sides of its boundary (plus the jitter for edge maps) is ignored;
- a region's colour model: its mean; for a task with shading, the least-squares plane over the region
  (x, y in [-1, 1] across the image), whose value at the image centre is the region's colour;
- ``mode_of(A, B)``: the fill nearest (max-abs) to the inside colour x the background nearest to the
  outside colour; -1 where either region is empty;
- ``is_valid(A, B)``: each region's colour within ``MIN_DISTANCE`` / 4 = 16 levels of its mode's colour; at
  least 90% of the inside pixels within ``t`` of the inside colour model, and at most as many outside pixels
  beyond ``t`` of the outside model as 10% of the inside pixel count + 2% of the outside pixel count (the
  noise's own outliers beyond 3 sigma in some channel are ~0.8%); a plane's rise across its region at
  most twice the task's shading amplitude + ``t``. So stripes and dot grids of amplitude max(3 sigma, 12)
  levels, a pixel mix of two modes (a mean >= 32 levels from every colour) and a shape elsewhere (IoU
  below ~0.8) are invalid, while the task's own B is valid (residuals: noise within 3 sigma, shading in
  the plane);
- ``mode_probabilities(A)``: the task's p(mode), the same for every A.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bicycle.data.base import DatasetRequest
from bicycle.data.shape_variants import area_geometry
from bicycle.data.shapes import KINDS, SPLIT_IDS, ShapesDataset, _dilate, _erode
from bicycle.errors import ConfigError

TASK_SALT = 0x5EED
TRAIN_LENGTH, VAL_LENGTH = 3000, 500
INPUT_KINDS = ("silhouette", "outline", "edges")
MIN_DISTANCE = 64.0  # levels of 255, max-abs over channels, between any two colours of a task
MEAN_TOLERANCE = MIN_DISTANCE / 4
MIN_PIXEL_TOLERANCE = 8.0  # levels; the pixel tolerance is max(3 sigma, this)
MIN_FRACTION = 0.9
NOISE_OUTLIERS = 0.02  # of the outside pixels: noise beyond 3 sigma in some channel is ~0.8% of them
MAX_NOISE, SHADING = 8.0, (4.0, 16.0)
AREA = (0.04, 0.25)
HULL_DIRECTIONS = 48
LEVEL = 127.5  # levels per unit of the [-1, 1] scale


@dataclass(frozen=True)
class Task:
    """One member of the family (module docstring). Colours in levels of 255: fills [F, 3], backgrounds [G, 3];
    p_mode [F * G], mode = fill * G + background."""

    seed: int
    input_kind: str
    line_px: int  # outline width at 128 px (outline), or 1 (edges); 0 for silhouettes
    gap_fraction: float
    fills: np.ndarray
    backgrounds: np.ndarray
    p_mode: np.ndarray
    kinds: tuple[str, ...]
    area: tuple[float, float]
    noise: float
    shading: float

    @property
    def num_modes(self) -> int:
        return len(self.fills) * len(self.backgrounds)

    def describe(self) -> str:
        skew = "uniform" if np.allclose(self.p_mode, self.p_mode[0]) else f"skewed (max p {self.p_mode.max():.2f})"
        return (f"procedural:{self.seed}: {self.input_kind}" + (f" {self.line_px} px" if self.input_kind == "outline" else "")
                + f", {len(self.fills)} fills x {len(self.backgrounds)} backgrounds ({skew}), {'/'.join(self.kinds)}, "
                f"area {self.area[0]:.2f}-{self.area[1]:.2f}, noise {self.noise:.1f}, shading {self.shading:.1f}")


def _palette(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` colours uniform in [0, 255]^3, pairwise >= MIN_DISTANCE apart (max-abs), by rejection."""
    while True:
        colours: list[np.ndarray] = []
        for _ in range(2000):
            c = rng.uniform(0, 255, size=3)
            if all(np.abs(c - o).max() >= MIN_DISTANCE for o in colours):
                colours.append(c)
                if len(colours) == count:
                    return np.stack(colours)


def _mode_probabilities(rng: np.random.Generator, fills: int, backgrounds: int) -> np.ndarray:
    style = int(rng.integers(3))
    uniform = np.full(fills * backgrounds, 1.0 / (fills * backgrounds))
    if style == 0:
        return uniform
    if style == 1:
        p = np.outer(rng.dirichlet(np.ones(fills)), rng.dirichlet(np.ones(backgrounds))).ravel()
    else:
        p = rng.dirichlet(np.ones(fills * backgrounds))
    p = 0.9 * p + 0.1 * uniform
    return p / p.sum()


def draw_task(seed: int) -> Task:
    """Task ``seed`` of the family (module docstring), the draws in a fixed order."""
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"procedural task must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([TASK_SALT, seed])
    input_kind = INPUT_KINDS[int(rng.integers(len(INPUT_KINDS)))]
    line_px = {"silhouette": 0, "outline": int(rng.integers(1, 5)), "edges": 1}[input_kind]
    gap_fraction = float(rng.uniform(0.03, 0.12)) if input_kind == "edges" else 0.0
    n_fills, n_bgs = int(rng.integers(2, 9)), int(rng.integers(1, 5))
    colours = _palette(rng, n_fills + n_bgs)
    p_mode = _mode_probabilities(rng, n_fills, n_bgs)
    kinds = tuple(k for k in KINDS if rng.random() < 0.6) or (KINDS[int(rng.integers(len(KINDS)))],)
    lo = float(rng.uniform(AREA[0], 0.15))
    area = (lo, float(min(AREA[1], lo + rng.uniform(0.05, 0.2))))
    noise = float(rng.uniform(0, MAX_NOISE))
    shading = float(rng.uniform(*SHADING)) if rng.random() < 0.5 else 0.0
    return Task(seed, input_kind, line_px, gap_fraction, colours[:n_fills], colours[n_fills:], p_mode, kinds, area,
                noise, shading)


def parse_task(arg: object) -> int:
    """``N`` of ``--data procedural:N``, with a one-line error for anything else."""
    text = str(arg).strip() if arg is not None else ""
    if not text.isdigit():
        raise ConfigError(f"dataset 'procedural' needs a task number: --data procedural:N (N >= 0), got {arg!r}")
    return int(text)


def _levels(colour: np.ndarray | Tensor) -> Tensor:
    """Levels of 255 -> the [-1, 1] scale, float32 [..., 3]."""
    return torch.as_tensor(colour, dtype=torch.float32) / LEVEL - 1.0


class ProceduralDataset(ShapesDataset):
    """Task N's pairs: A [1, S, S] (+1 drawn on -1), B [3, S, S], float32 in [-1, 1]; an exact oracle."""

    def __init__(self, task: int | Task, image_size: int, split: str = "train", length: int | None = None) -> None:
        self.task = task if isinstance(task, Task) else draw_task(task)
        if split not in SPLIT_IDS:
            raise ValueError(f"procedural: split must be train or val, got {split!r}")
        self.image_size, self.split, self.seed = image_size, split, self.task.seed
        self.length = length if length is not None else (TRAIN_LENGTH if split == "train" else VAL_LENGTH)
        self.num_modes = self.task.num_modes
        self.fills, self.backgrounds = _levels(self.task.fills), _levels(self.task.backgrounds)
        self._p = self.task.p_mode

    @classmethod
    def from_request(cls, request: DatasetRequest) -> ProceduralDataset:  # type: ignore[override]
        return cls(parse_task(request.option("task", None)), request.image_size, request.split)

    @property
    def palette(self) -> Tensor:  # type: ignore[override]
        return self.fills

    @property
    def pixel_tolerance(self) -> float:
        """Levels of 255."""
        return max(3 * self.task.noise, MIN_PIXEL_TOLERANCE)

    def _px(self, at_128: int) -> int:
        return max(1, round(at_128 * self.image_size / 128))

    @property
    def jitter_px(self) -> int:
        return self._px(1) if self.task.input_kind == "edges" else 0

    # -- generation ---------------------------------------------------------------------------
    def params(self, index: int) -> dict:
        rng = np.random.default_rng([TASK_SALT, self.task.seed, SPLIT_IDS[self.split], index])
        geometry = area_geometry(rng, *self.task.area)
        while geometry["kind"] not in self.task.kinds:
            geometry = area_geometry(rng, *self.task.area)
        mode = int(rng.choice(self.num_modes, p=self._p))
        nb = len(self.backgrounds)
        return {**geometry, "mode": mode, "fill": mode // nb, "background": mode % nb,
                "shade_angles": rng.uniform(0, 2 * math.pi, size=2).tolist(),
                "noise_seed": int(rng.integers(2**62)), "edge_seed": int(rng.integers(2**62))}

    def _edges(self, inside: Tensor, p: dict) -> Tensor:
        """A 1-px (at 128 px) boundary with gaps and per-sector jitter. inside: bool [S, S] -> bool [S, S]."""
        s = self.image_size
        line = inside & ~_erode(inside[None, None], self._px(1))[0, 0]
        rng = np.random.default_rng(p["edge_seed"])
        ys, xs = torch.nonzero(line, as_tuple=True)
        theta = torch.atan2(ys.double() + 0.5 - p["cy"] * s, xs.double() + 0.5 - p["cx"] * s) % (2 * math.pi)
        sectors = 16
        sector = (theta / (2 * math.pi) * sectors).long().clamp(max=sectors - 1)
        j = self.jitter_px
        offsets = torch.from_numpy(rng.integers(-j, j + 1, size=(sectors, 2)))
        keep = torch.ones_like(theta, dtype=torch.bool)
        n_gaps = int(rng.integers(2, 6))
        for start, width in zip(rng.uniform(0, 2 * math.pi, n_gaps), rng.dirichlet(np.ones(n_gaps)) * self.task.gap_fraction):
            keep &= ((theta - start) % (2 * math.pi)) >= width * 2 * math.pi
        ys = (ys + offsets[sector, 0]).clamp(0, s - 1)[keep]
        xs = (xs + offsets[sector, 1]).clamp(0, s - 1)[keep]
        out = torch.zeros_like(line)
        out[ys, xs] = True
        return out

    def _drawn(self, inside: Tensor, p: dict) -> Tensor:
        kind = self.task.input_kind
        if kind == "silhouette":
            return inside
        if kind == "outline":
            return inside & ~_erode(inside[None, None], self._px(self.task.line_px))[0, 0]
        return self._edges(inside, p)

    def _b(self, inside: Tensor, fill: Tensor, background: Tensor, p: dict) -> Tensor:
        """B in levels of 255 as float64 [3, S, S], before rounding."""
        s = self.image_size
        t = (torch.arange(s, dtype=torch.float64) + 0.5) / s * 2 - 1
        y, x = torch.meshgrid(t, t, indexing="ij")
        b = torch.where(inside, fill.double().view(3, 1, 1), background.double().view(3, 1, 1))
        if self.task.shading:
            (af, ag) = p["shade_angles"]
            ramp = torch.where(inside, math.cos(af) * x + math.sin(af) * y, math.cos(ag) * x + math.sin(ag) * y)
            b = b + self.task.shading * ramp / math.sqrt(2)
        if self.task.noise:
            g = torch.Generator().manual_seed(p["noise_seed"] % (2**63))
            b = b + self.task.noise * torch.randn(b.shape, generator=g, dtype=torch.float64)
        return b

    def render(self, index: int) -> tuple[Tensor, Tensor]:
        p = self.params(index)
        inside = self._inside(p)
        a = torch.where(self._drawn(inside, p), 1.0, -1.0)[None].float()
        b = self._b(inside, torch.from_numpy(self.task.fills[p["fill"]]), torch.from_numpy(self.task.backgrounds[p["background"]]), p)
        return a, (b.round().clamp(0, 255) / LEVEL - 1.0).float()

    # -- oracle -------------------------------------------------------------------------------
    def region_of(self, a: Tensor) -> Tensor:
        """A [N, 1, H, W] -> bool [N, 1, H, W]: the convex hull of the drawn pixels (A > 0), from their
        extent in HULL_DIRECTIONS directions; empty where nothing is drawn."""
        n, _, h, w = a.shape
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        angles = torch.arange(HULL_DIRECTIONS, dtype=torch.float32) * (math.pi / HULL_DIRECTIONS)
        proj = torch.stack([xx.flatten(), yy.flatten()], 1) @ torch.stack([angles.cos(), angles.sin()])  # [HW, K]
        out = []
        for chunk in (a[i:i + 8] for i in range(0, n, 8)):
            drawn = (chunk[:, 0] > 0).flatten(1).cpu()[:, :, None]  # [n, HW, 1]
            lo = torch.where(drawn, proj, torch.inf).amin(1, keepdim=True)
            hi = torch.where(drawn, proj, -torch.inf).amax(1, keepdim=True)
            out.append(((proj >= lo - 1e-3) & (proj <= hi + 1e-3)).all(-1).view(-1, 1, h, w))
        return torch.cat(out).to(a.device)

    def _regions(self, a: Tensor) -> tuple[Tensor, Tensor]:
        region = self.region_of(a)
        r = max(1, a.shape[-1] // 64) + self.jitter_px
        band = _dilate(region, r) & ~_erode(region, r)
        return (region & ~band)[:, 0], (~region & ~band)[:, 0]

    def _fit(self, b: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A region's colour model. b [N, 3, H, W], mask bool [N, H, W] -> (colour [N, 3], fitted values
        [N, 3, H, W], rise across the region [N] in levels). Without shading: the mean (rise 0). With
        shading: the least-squares plane c0 + c1 x + c2 y per channel (x, y in [-1, 1] across the image),
        whose value at the image centre, c0, is the region's colour (the ramps are 0 there)."""
        m = mask.flatten(1).to(b.dtype)  # [N, HW]
        count = m.sum(1).clamp_min(1)
        if not self.task.shading:
            colour = torch.einsum("nck,nk->nc", b.flatten(2), m) / count[:, None]
            return colour, colour[:, :, None, None].expand_as(b), torch.zeros(b.shape[0], device=b.device)
        n, _, h, w = b.shape
        t = (torch.arange(h, dtype=b.dtype, device=b.device) + 0.5) / h * 2 - 1
        yy, xx = torch.meshgrid(t, t, indexing="ij")
        basis = torch.stack([torch.ones_like(xx), xx, yy]).flatten(1)  # [3, HW]
        gram = torch.einsum("pk,qk,nk->npq", basis, basis, m) + 1e-6 * torch.eye(3, dtype=b.dtype, device=b.device)
        rhs = torch.einsum("pk,nck,nk->ncp", basis, b.flatten(2), m)  # [N, channels, coefficients]
        coef = torch.linalg.solve(gram[:, None], rhs[..., None])[..., 0]  # [N, C, 3]
        fitted = torch.einsum("ncp,pk->nck", coef, basis).view_as(b)
        on = mask[:, None].expand_as(b).flatten(2)
        flat = fitted.flatten(2)
        rise = (torch.where(on, flat, -torch.inf).amax(-1) - torch.where(on, flat, torch.inf).amin(-1)).amax(-1)
        return coef[..., 0], fitted, torch.where(mask.flatten(1).any(1), rise * LEVEL, 0.0)

    @staticmethod
    def _nearest(colour: Tensor, colours: Tensor) -> Tensor:
        return (colour[:, None] - colours[None]).abs().amax(-1).argmin(-1)

    def _verdicts(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(mode [N] int64, -1 where unknown; valid [N] bool), both from one pass over the regions."""
        inner, outer = self._regions(a)
        b = b.float()
        fills, bgs = self.fills.to(b.device), self.backgrounds.to(b.device)
        colour_in, fit_in, rise_in = self._fit(b, inner)
        colour_out, fit_out, rise_out = self._fit(b, outer)
        f, g = self._nearest(colour_in, fills), self._nearest(colour_out, bgs)
        known = inner.flatten(1).any(1) & outer.flatten(1).any(1)
        mode = torch.where(known, f * len(bgs) + g, -1).to(torch.int64)
        tol = self.pixel_tolerance / LEVEL
        colours_ok = ((colour_in - fills[f]).abs().amax(-1) <= MEAN_TOLERANCE / LEVEL) & \
                     ((colour_out - bgs[g]).abs().amax(-1) <= MEAN_TOLERANCE / LEVEL)
        max_rise = 2 * self.task.shading + self.pixel_tolerance
        n_inner = inner.flatten(1).sum(1)
        inside_ok = (((b - fit_in).abs().amax(1) <= tol) & inner).flatten(1).sum(1)
        outside_bad = (((b - fit_out).abs().amax(1) > tol) & outer).flatten(1).sum(1)
        allowed_outside = (1 - MIN_FRACTION) * n_inner + NOISE_OUTLIERS * outer.flatten(1).sum(1)
        valid = (known & colours_ok & (rise_in <= max_rise) & (rise_out <= max_rise)
                 & (inside_ok >= MIN_FRACTION * n_inner) & (outside_bad <= allowed_outside))
        return mode.cpu(), valid.cpu()

    def mode_of(self, a: Tensor, b: Tensor) -> Tensor:
        """A [N, 1, H, W], B [N, 3, H, W] -> int64 [N]: the fill nearest to the inside colour * G + the
        background nearest to the outside colour; -1 where the region or its outside is empty."""
        return self._verdicts(a, b)[0]

    def is_valid(self, a: Tensor, b: Tensor) -> Tensor:
        """A [N, 1, H, W], B [N, 3, H, W] -> bool [N]: the right shape, one fill inside and one background
        outside (each within the task's noise and shading), as the module docstring states."""
        return self._verdicts(a, b)[1]

    def mode_probabilities(self, a: Tensor) -> Tensor:
        """A [N, 1, H, W] -> float [N, K]: the task's p(mode), the same for every A."""
        return torch.from_numpy(self._p).float().expand(a.shape[0], -1).clone()


def build_procedural(request: DatasetRequest) -> ProceduralDataset:
    return ProceduralDataset.from_request(request)


__all__ = ["ProceduralDataset", "Task", "draw_task", "parse_task", "TRAIN_LENGTH", "VAL_LENGTH"]
