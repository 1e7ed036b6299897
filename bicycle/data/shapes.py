"""``shapes``: a procedural dataset with K modes of B per A, one of them common, and an exact oracle.

A (1 channel): the silhouette of one random convex shape (ellipse, rectangle or triangle; random
position, size and rotation), +1 on -1. B (3 channels): the same shape filled with one of K palette
colours on a grey (0) background. The colour is drawn independently of A: the first palette colour
(near black) with probability ``COMMON_P`` = 0.3, each of the other K - 1 with an equal share of the
rest (0.1 each for K = 8), as in real data where one colour is the most common but far from the only
one. The per-channel median of that distribution is the common colour, so the L1-optimal
deterministic output is one valid mode: a model that ignores z can be realistic, but not diverse.
Everything is a function of (seed, split, index) and renders at any size: no files, no network.

Oracle (the dataset's spec, used by ``bicycle eval``):
- the shape's region is A > 0; a band of about one pixel (per 64 px) on both sides of its boundary
  is ignored;
- ``mode_of(A, B)``: the palette colour nearest (max-abs over channels) to B's median colour
  inside the region;
- ``is_valid(A, B)``: at least 85% of inside pixels within 0.45 (max-abs) of that palette colour
  AND at most as many non-background pixels outside (beyond 0.45 of grey) as 15% of the inside
  pixel count (so a shape drawn elsewhere fails even when it is small next to the background).
Palette colours are corners of the cube {-0.9, 0.9}^3, so the mean of two different modes has a
channel at 0 (0.9 from every colour): blends are invalid, as are noise and Bs of another shape.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bicycle.data.base import DatasetRequest
from bicycle.errors import ConfigError

LEVEL = 0.9
TOLERANCE = 0.45
MIN_FRACTION = 0.85
MIN_MODES, MAX_MODES = 6, 8
COMMON_P = 0.3
# Cube corners (any two differ by 1.8 in at least one channel).
_CORNERS = [(-1, -1, -1), (1, 1, 1), (1, -1, -1), (-1, 1, 1), (-1, 1, -1), (1, -1, 1), (-1, -1, 1), (1, 1, -1)]
PALETTE = torch.tensor(_CORNERS, dtype=torch.float32) * LEVEL
BACKGROUND = 0.0
SPLIT_IDS = {"train": 0, "val": 1}
DEFAULT_LENGTHS = {"train": 20_000, "val": 500}
KINDS = ("ellipse", "rectangle", "triangle")


def mode_distribution(modes: int) -> np.ndarray:
    """p(mode) [K], the same for every A: COMMON_P for mode 0, the rest shared equally."""
    p = np.full(modes, (1.0 - COMMON_P) / (modes - 1))
    p[0] = COMMON_P
    return p


def draw_geometry(rng: np.random.Generator) -> dict[str, float | str]:
    """One random shape (kind, centre, radii, angle; in units of the image side) from ``rng``, the draws
    in a fixed order. ``ShapesDataset`` and the variants in :mod:`bicycle.data.shape_variants` use it."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    angle = float(rng.uniform(0, math.pi))
    if kind == "rectangle":
        rx, ry = rng.uniform(0.17, 0.3, size=2)
        reach = math.hypot(rx, ry)
    elif kind == "ellipse":
        rx, ry = rng.uniform(0.2, 0.38, size=2)
        reach = max(rx, ry)
    else:
        rx = ry = float(rng.uniform(0.28, 0.42))
        reach = rx
    slack = max(0.0, 0.46 - reach)
    cx, cy = 0.5 + rng.uniform(-slack, slack, size=2)
    return {"kind": kind, "cx": float(cx), "cy": float(cy), "rx": float(rx), "ry": float(ry), "angle": angle}


def _erode(mask: Tensor, r: int) -> Tensor:
    return -F.max_pool2d(-mask.float(), 2 * r + 1, 1, r) > 0


def _dilate(mask: Tensor, r: int) -> Tensor:
    return F.max_pool2d(mask.float(), 2 * r + 1, 1, r) > 0


def boundary_band(region: Tensor) -> Tensor:
    """region: bool [N, 1, H, W] -> the ignored band, about 1 px per 64 px (at least 1) on each side."""
    r = max(1, region.shape[-1] // 64)
    return _dilate(region, r) & ~_erode(region, r)


class ShapesDataset:
    """Procedural silhouette -> coloured shape pairs. A [1, S, S], B [3, S, S], float32 in [-1, 1]."""

    a_channels = 1
    b_channels = 3

    def __init__(self, image_size: int, split: str = "train", seed: int = 0, modes: int = 8, length: int | None = None) -> None:
        if not MIN_MODES <= modes <= MAX_MODES:
            raise ConfigError(f"shapes: modes must be within {MIN_MODES}..{MAX_MODES}, got {modes}")
        if split not in SPLIT_IDS:
            raise ValueError(f"shapes: split must be train or val, got {split!r}")
        self.image_size = image_size
        self.split = split
        self.seed = seed
        self.num_modes = modes
        self.length = length if length is not None else DEFAULT_LENGTHS[split]
        self.palette = PALETTE[:modes]
        self._p = mode_distribution(modes)

    @classmethod
    def from_request(cls, request: DatasetRequest) -> ShapesDataset:
        return cls(request.image_size, request.split, request.seed, int(request.option("modes", 8)))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """No augmentation: every epoch sees the same pairs."""

    # -- generation ---------------------------------------------------------------------------
    def params(self, index: int) -> dict[str, float | int | str]:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])
        geometry = draw_geometry(rng)
        mode = int(rng.choice(self.num_modes, p=self._p))
        return {**geometry, "mode": mode}

    def true_mode(self, index: int) -> int:
        return int(self.params(index)["mode"])

    def _inside(self, p: dict) -> Tensor:
        s = self.image_size
        t = (torch.arange(s, dtype=torch.float64) + 0.5) / s
        y, x = torch.meshgrid(t, t, indexing="ij")
        dx, dy = x - p["cx"], y - p["cy"]
        c, sn = math.cos(p["angle"]), math.sin(p["angle"])
        u, v = c * dx + sn * dy, -sn * dx + c * dy
        if p["kind"] == "ellipse":
            return (u / p["rx"]) ** 2 + (v / p["ry"]) ** 2 <= 1.0
        if p["kind"] == "rectangle":
            return (u.abs() <= p["rx"]) & (v.abs() <= p["ry"])
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):  # triangle: three half-planes at distance r/2 from the centre
            a = p["angle"] + 2 * math.pi * k / 3
            inside &= (math.cos(a) * dx + math.sin(a) * dy) <= p["rx"] / 2
        return inside

    def render(self, index: int) -> tuple[Tensor, Tensor]:
        p = self.params(index)
        inside = self._inside(p)[None, None]
        a = torch.where(inside, 1.0, -1.0)[0].float()
        colour = self.palette[int(p["mode"])].view(3, 1, 1)
        b = torch.where(inside[0], colour, torch.full_like(colour, BACKGROUND)).float()
        return a, b

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.render(index)

    def get_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        pairs = [self[i] for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    # -- oracle -------------------------------------------------------------------------------
    def _regions(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """A [N, 1, H, W] -> (inside, outside) bool [N, H, W], the boundary band excluded from both."""
        region = a > 0
        band = boundary_band(region)
        return (region & ~band)[:, 0], (~region & ~band)[:, 0]

    def mode_of(self, a: Tensor, b: Tensor) -> Tensor:
        """A [N, 1, H, W], B [N, 3, H, W] -> int64 [N]: palette index nearest to B's median inside colour."""
        inner, _ = self._regions(a)
        palette = self.palette.to(b.device, b.dtype)
        out = torch.zeros(a.shape[0], dtype=torch.int64)
        for i in range(a.shape[0]):
            pixels = b[i].permute(1, 2, 0)[inner[i]]
            if pixels.numel() == 0:
                out[i] = -1
                continue
            median = pixels.median(0).values
            out[i] = (median - palette).abs().amax(-1).argmin()
        return out

    def is_valid(self, a: Tensor, b: Tensor) -> Tensor:
        """A [N, 1, H, W], B [N, 3, H, W] -> bool [N]: the right shape, filled with one palette colour."""
        inner, outer = self._regions(a)
        modes = self.mode_of(a, b)
        palette = self.palette.to(b.device, b.dtype)
        valid = torch.zeros(a.shape[0], dtype=torch.bool)
        for i in range(a.shape[0]):
            if modes[i] < 0 or not outer[i].any():
                continue
            pix = b[i].permute(1, 2, 0)
            inside_ok = ((pix[inner[i]] - palette[modes[i]]).abs().amax(-1) < TOLERANCE).float().mean()
            outside_bad = ((pix[outer[i]] - BACKGROUND).abs().amax(-1) >= TOLERANCE).sum()
            valid[i] = bool(inside_ok >= MIN_FRACTION) and bool(outside_bad <= (1 - MIN_FRACTION) * inner[i].sum())
        return valid

    def mode_probabilities(self, a: Tensor) -> Tensor:
        """A [N, 1, H, W] -> float [N, K]: the true p(mode | A), the same for every A here."""
        return torch.from_numpy(self._p).float().expand(a.shape[0], -1).clone()


__all__ = ["ShapesDataset", "PALETTE"]
