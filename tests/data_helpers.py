"""Tiny image datasets for tests, written with Pillow.

``make_pair(a)`` builds the partner B of an A pattern as ``255 - a`` (same pixel positions), so that after
any shared resize/crop/flip, ``B == -A`` in [-1, 1] (up to one rounding step); a misaligned crop or flip
breaks that for a random pattern.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A random blocky uint8 pattern [H, W, C] (2x2 blocks: survives resizing well)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=((height + 1) // 2, (width + 1) // 2, channels), dtype=np.uint8)
    return np.ascontiguousarray(small.repeat(2, 0).repeat(2, 1)[:height, :width])


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([a, b], axis=1)


def save(arr: np.ndarray, path: Path, mode: str | None = None) -> Path:
    """Save uint8 [H, W, C] (C = 1, 3 or 4) to ``path``; ``mode`` "P" saves a palette image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    if mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode is not None and img.mode != mode:
        img = img.convert(mode)
    img.save(path)
    return path


def make_aligned_dataset(
    root: Path,
    n_train: int = 3,
    n_val: int = 2,
    size: int = 16,
    channels: int = 3,
    ext: str = ".png",
) -> Path:
    """ROOT/train and ROOT/val of ``size`` x ``2*size`` A|B files with B = 255 - A; returns ROOT."""
    for split, n, base in (("train", n_train, 0), ("val", n_val, 1000)):
        for i in range(n):
            a = pattern(size, size, channels, seed=base + i)
            save(side_by_side(a, 255 - a), root / split / f"{i:03d}{ext}")
    return root
