"""Differentiable augmentation of the discriminators' inputs (DiffAugment; Zhao et al., "Differentiable Augmentation
for Data-Efficient GAN Training", NeurIPS 2020): the same random transforms T on real and fake images, in D's update
and in G's adversarial terms alike, so D cannot memorise a small training set and G still learns the un-augmented
distribution (each T is differentiable with respect to its input).

A policy is a tuple of transform names applied in order; each image of a batch draws its own parameters from the
device's default generator (inside a captured CUDA graph, as the step's other noise). Images are in [-1, 1].
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _per_image(x: Tensor) -> Tensor:
    """[N, 1, 1, 1] uniform draws in [0, 1) on ``x``'s device."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def color(x: Tensor) -> Tensor:
    """Brightness (+ U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel's channel mean), contrast (x U(0.5, 1.5)
    around the image mean)."""
    x = x + (_per_image(x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_per_image(x) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_image(x) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction (integer pixels), zeros shifted in."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = (torch.rand(n, device=x.device) * (2 * sy + 1)).long().clamp_(max=2 * sy) - sy
    dx = (torch.rand(n, device=x.device) * (2 * sx + 1)).long().clamp_(max=2 * sx) - sx
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))
    rows = (torch.arange(h, device=x.device)[None, :] + sy - dy[:, None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * sx)
    picked = padded.gather(2, rows)
    cols = (torch.arange(w, device=x.device)[None, :] + sx - dx[:, None])[:, None, None, :].expand(n, x.shape[1], h, w)
    return picked.gather(3, cols)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Set a square of ``ratio`` of the image's side, at a random centre per image, to 0 (mid-grey in [-1, 1])."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.rand(n, 1, 1, device=x.device) * h
    cx = torch.rand(n, 1, 1, device=x.device) * w
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :]
    keep = ((ys - cy).abs() >= ch / 2) | ((xs - cx).abs() >= cw / 2)
    return x * keep[:, None].to(x.dtype)


TRANSFORMS: dict[str, Callable[[Tensor], Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(text: str) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> ("color", "translation", "cutout"); ``""`` -> () (off). Unknown names:
    ValueError naming them and the known ones."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {', '.join(unknown)}: use a comma-separated list of "
                         f"{', '.join(TRANSFORMS)}")
    return names


def augment(x: Tensor, policy: tuple[str, ...]) -> Tensor:
    """``x`` [N, C, H, W] through each transform of ``policy`` in order."""
    for name in policy:
        x = TRANSFORMS[name](x)
    return x
