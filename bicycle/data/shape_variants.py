"""Harder variants of the built-in ``shapes`` dataset, each with an exact oracle (registered names below).

Every variant draws one random convex shape (ellipse, rectangle or triangle, as ``shapes`` does) and
renders B (3 channels) as the shape filled with one of 4 fill colours on one of 3 background colours:
12 modes of B per A, mode id = fill index * 3 + background index. Fill and background are drawn
independently of each other and of A. The variation axes:

- A: the filled silhouette (+1 on -1), or the *outline*: the shape's boundary, ``max(1, S // 32)`` px
  wide (4 px at 128 px, 1 px at 32 px) on the inner side of the boundary, +1 on -1;
- the mode probabilities: all 12 equally likely, or unequal (fill 0.4/0.3/0.2/0.1 x background
  0.5/0.3/0.2, from 0.20 down to 0.02);
- the shape's size: ``shapes``' own radii ("big": about 10-45% of the image), or "small": the shape's
  analytic area drawn uniformly in [0.105, 0.245] of the image, so that its pixel count lies in
  [0.10, 0.25] at 128 px, the target size (pixelation moved it by at most 0.003 at 128 px,
  0.005 at 64 px and 0.022 at 32 px, measured over 1,500-10,000 shapes); the fill is then a
  small-area attribute whose L1 gain is small next to the background's.

Names (``--data NAME``), all with 12 modes:

==================  =========  ======  =========
name                A          size    p(mode)
==================  =========  ======  =========
shapes-fillbg       filled     big     equal
shapes-outline-big  outline    big     equal
shapes-unequal      filled     small   unequal
shapes-outline      outline    small   equal
==================  =========  ======  =========

``shapes-outline`` is HELD OUT: it is the generalization check for defaults chosen on the other
variants (and on ``shapes``). Do not tune any default (learning rate, loss weights, nz, schedule, ...)
on it; measure on it only after the choice is made.

Colours (channel values in [-1, 1]). Fills: 4 corners of the cube {-0.9, 0.9}^3 (black, white, red,
blue): any two differ by 1.8 in some channel, and the mean of two of them has a channel at 0, 0.9 from
every fill. Backgrounds: (0, 0.9, 0.9), (0, 0.9, -0.9), (0, -0.9, 0.9) (light cyan, lime, violet): the
red channel is 0, so each is 0.9 (max-abs) from every fill; any two backgrounds differ by 1.8 in green
or blue, and the mean of two of them has a second channel at 0, 0.9 from every background. So every
pair of colours (fill/fill, background/background, fill/background) is at least 0.9 apart, twice the
0.45 tolerance: a pixel-mean of two Bs of different modes is invalid, and a fill is never mistaken for
a background (or for the grey background of ``shapes``).

Oracle (used by ``bicycle eval``), given A and B:
- the region: A > 0 for a filled A; for an outline A, the pixels between the first and the last
  outline pixel both along their row and along their column (exact for convex shapes, whose every row
  and column of pixels is one interval); a band of ``max(1, S // 64)`` px on both sides of the region's
  boundary is ignored, as in ``shapes``;
- ``mode_of(A, B)``: (the fill nearest, max-abs, to B's median colour inside) * 3 + (the background
  nearest to B's median colour outside);
- ``is_valid(A, B)``: at least 85% of the inside pixels within 0.45 (max-abs) of that fill AND at most
  as many outside pixels beyond 0.45 of that background as 15% of the inside pixel count (as ``shapes``);
- ``mode_probabilities(A)``: the true p(mode | A), the same for every A.
Everything is a function of (seed, split, index) and renders at any size: no files, no network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bicycle.data.base import DatasetRequest
from bicycle.data.shapes import (DEFAULT_LENGTHS, KINDS, LEVEL, MIN_FRACTION, SPLIT_IDS, TOLERANCE, ShapesDataset,
                                 _erode, boundary_band, draw_geometry)

FILLS = torch.tensor([(-1, -1, -1), (1, 1, 1), (1, -1, -1), (-1, -1, 1)], dtype=torch.float32) * LEVEL
BACKGROUNDS = torch.tensor([(0, 1, 1), (0, 1, -1), (0, -1, 1)], dtype=torch.float32) * LEVEL
SMALL_AREA = (0.105, 0.245)
ASPECT = (1.0, 1.8)
HELD_OUT = "shapes-outline"


@dataclass(frozen=True)
class Variant:
    """One member of the family. area: None for ``shapes``' radii, else the (lo, hi) range of the shape's
    area as a fraction of the image; fill_p, bg_p: the probabilities of the fills and backgrounds."""

    name: str
    outline: bool
    area: tuple[float, float] | None
    fill_p: tuple[float, ...]
    bg_p: tuple[float, ...]
    salt: int
    description: str

    def mode_distribution(self) -> np.ndarray:
        """p(mode) [len(fill_p) * len(bg_p)], mode = fill * len(bg_p) + background."""
        return np.outer(np.asarray(self.fill_p), np.asarray(self.bg_p)).ravel()


_EQUAL_FILLS, _EQUAL_BGS = (0.25,) * 4, (1 / 3,) * 3
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("shapes-fillbg", False, None, _EQUAL_FILLS, _EQUAL_BGS, 1,
            "shapes variant: silhouette -> 4 fills x 3 backgrounds (12 equal modes; exact oracle)"),
    Variant("shapes-outline-big", True, None, _EQUAL_FILLS, _EQUAL_BGS, 2,
            "shapes variant: outline -> 4 fills x 3 backgrounds, large shapes (12 equal modes; exact oracle)"),
    Variant("shapes-unequal", False, SMALL_AREA, (0.4, 0.3, 0.2, 0.1), (0.5, 0.3, 0.2), 3,
            "shapes variant: small silhouette -> 4 fills x 3 backgrounds, unequal mode probabilities (exact oracle)"),
    Variant(HELD_OUT, True, SMALL_AREA, _EQUAL_FILLS, _EQUAL_BGS, 4,
            "HELD OUT (do not tune on it): outline -> 4 fills x 3 backgrounds, shapes 10-25% of the image "
            "(12 equal modes; exact oracle)"),
)}


def area_geometry(rng: np.random.Generator, lo: float, hi: float) -> dict[str, float | str]:
    """One random shape whose analytic area is uniform in [lo, hi] (fractions of the image; hi <= 0.25)."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    angle = float(rng.uniform(0, math.pi))
    area = float(rng.uniform(lo, hi))
    aspect = float(rng.uniform(*ASPECT))
    if kind == "ellipse":  # pi rx ry
        rx = math.sqrt(area / math.pi * aspect)
        ry = rx / aspect
        reach = rx
    elif kind == "rectangle":  # half-sides: 4 rx ry
        rx = math.sqrt(area / 4 * aspect)
        ry = rx / aspect
        reach = math.hypot(rx, ry)
    else:  # equilateral, inradius rx / 2: 3 sqrt(3) rx^2 / 4
        rx = ry = math.sqrt(4 * area / (3 * math.sqrt(3)))
        reach = rx
    slack = max(0.0, 0.46 - reach)
    cx, cy = 0.5 + rng.uniform(-slack, slack, size=2)
    return {"kind": kind, "cx": float(cx), "cy": float(cy), "rx": rx, "ry": ry, "angle": angle, "area": area}


def outline_width(image_size: int) -> int:
    return max(1, image_size // 32)


def fill_outline(outline: Tensor) -> Tensor:
    """outline: bool [N, 1, H, W] -> the filled region: pixels between the first and last outline pixel
    of their row and of their column (exact for the boundary of a convex shape)."""
    m = outline.int()
    rows = (m.cumsum(-1) > 0) & (m.flip(-1).cumsum(-1).flip(-1) > 0)
    cols = (m.cumsum(-2) > 0) & (m.flip(-2).cumsum(-2).flip(-2) > 0)
    return rows & cols


class ShapeVariantDataset(ShapesDataset):
    """A [1, S, S] (silhouette or outline), B [3, S, S] (fill on background), float32 in [-1, 1]; 12 modes."""

    def __init__(self, variant: Variant | str, image_size: int, split: str = "train", seed: int = 0,
                 length: int | None = None) -> None:
        self.variant = VARIANTS[variant] if isinstance(variant, str) else variant
        if split not in SPLIT_IDS:
            raise ValueError(f"{self.variant.name}: split must be train or val, got {split!r}")
        self.image_size = image_size
        self.split = split
        self.seed = seed
        self.fills = FILLS[:len(self.variant.fill_p)]
        self.backgrounds = BACKGROUNDS[:len(self.variant.bg_p)]
        self.num_modes = len(self.fills) * len(self.backgrounds)
        self.length = length if length is not None else DEFAULT_LENGTHS[split]
        self._p = self.variant.mode_distribution()

    @classmethod
    def from_request(cls, request: DatasetRequest, variant: str = HELD_OUT) -> ShapeVariantDataset:  # type: ignore[override]
        return cls(variant, request.image_size, request.split, request.seed)

    @property
    def palette(self) -> Tensor:  # type: ignore[override]
        """The fill colours (``shapes`` calls its fills the palette)."""
        return self.fills

    def split_mode(self, mode: int | Tensor) -> tuple:
        """mode id -> (fill index, background index)."""
        nb = len(self.backgrounds)
        return mode // nb, mode % nb

    # -- generation ---------------------------------------------------------------------------
    def params(self, index: int) -> dict[str, float | int | str]:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, self.variant.salt])
        area = self.variant.area
        geometry = draw_geometry(rng) if area is None else area_geometry(rng, *area)
        mode = int(rng.choice(self.num_modes, p=self._p))
        fill, bg = self.split_mode(mode)
        return {**geometry, "mode": mode, "fill": int(fill), "background": int(bg)}

    def render(self, index: int) -> tuple[Tensor, Tensor]:
        p = self.params(index)
        inside = self._inside(p)[None, None]
        shown = inside & ~_erode(inside, outline_width(self.image_size)) if self.variant.outline else inside
        a = torch.where(shown, 1.0, -1.0)[0].float()
        fill = self.fills[int(p["fill"])].view(3, 1, 1)
        bg = self.backgrounds[int(p["background"])].view(3, 1, 1).expand_as(fill)
        b = torch.where(inside[0], fill, bg).float()
        return a, b

    # -- oracle -------------------------------------------------------------------------------
    def region_of(self, a: Tensor) -> Tensor:
        """A [N, 1, H, W] -> bool [N, 1, H, W]: the shape's filled region."""
        return fill_outline(a > 0) if self.variant.outline else a > 0

    def _regions(self, a: Tensor) -> tuple[Tensor, Tensor]:
        region = self.region_of(a)
        band = boundary_band(region)
        return (region & ~band)[:, 0], (~region & ~band)[:, 0]

    @staticmethod
    def _nearest(b: Tensor, mask: Tensor, colours: Tensor) -> Tensor:
        """b [N, 3, H, W], mask bool [N, H, W], colours [C, 3] -> int64 [N]: the colour nearest (max-abs)
        to the per-channel (lower) median of b over the mask; -1 where the mask is empty."""
        masked = torch.where(mask[:, None], b, torch.full_like(b, float("nan"))).flatten(2)
        median = masked.nanmedian(-1).values  # [N, 3]
        nearest = (median[:, None] - colours[None]).abs().amax(-1).argmin(-1)
        return torch.where(mask.flatten(1).any(1), nearest, -1).to(torch.int64)

    def mode_of(self, a: Tensor, b: Tensor) -> Tensor:
        """A [N, 1, H, W], B [N, 3, H, W] -> int64 [N]: nearest fill (median inside) * 3 + nearest
        background (median outside); -1 where the region or its outside is empty."""
        inner, outer = self._regions(a)
        fills, bgs = self.fills.to(b.device, b.dtype), self.backgrounds.to(b.device, b.dtype)
        f, g = self._nearest(b, inner, fills), self._nearest(b, outer, bgs)
        return torch.where((f >= 0) & (g >= 0), f * len(bgs) + g, -1).cpu()

    def is_valid(self, a: Tensor, b: Tensor) -> Tensor:
        """A [N, 1, H, W], B [N, 3, H, W] -> bool [N]: the right shape, one fill inside, one background outside."""
        inner, outer = self._regions(a)
        modes = self.mode_of(a, b).to(b.device)
        known = modes >= 0
        f, g = self.split_mode(modes.clamp_min(0))
        fill = self.fills.to(b.device, b.dtype)[f][:, :, None, None]
        bg = self.backgrounds.to(b.device, b.dtype)[g][:, :, None, None]
        n_inner = inner.flatten(1).sum(1)
        inside_ok = (((b - fill).abs().amax(1) < TOLERANCE) & inner).flatten(1).sum(1)
        outside_bad = (((b - bg).abs().amax(1) >= TOLERANCE) & outer).flatten(1).sum(1)
        valid = known & (inside_ok >= MIN_FRACTION * n_inner) & (outside_bad <= (1 - MIN_FRACTION) * n_inner)
        return valid.cpu()


def build_variant(name: str, request: DatasetRequest) -> ShapeVariantDataset:
    return ShapeVariantDataset.from_request(request, name)


__all__ = ["ShapeVariantDataset", "Variant", "VARIANTS", "HELD_OUT", "FILLS", "BACKGROUNDS", "fill_outline"]
