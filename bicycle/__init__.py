"""bicycle: multimodal image-to-image translation (BicycleGAN).

Importing bicycle is cheap: no device probing, no plugin loading, no compilation. ``bicycle.load(path)``
gives a trained model for inference (:mod:`bicycle.inference.model`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from bicycle.hookspecs import hookimpl  # noqa: E402  (cheap: pluggy only)

if TYPE_CHECKING:
    from pathlib import Path

    from bicycle.inference.model import Model


def load(path: str | Path, device: str = "auto", weights: str = "auto") -> Model:
    """A trained model from a run dir, a checkpoint or exported weights; see :func:`bicycle.inference.model.load`."""
    from bicycle.inference.model import load as _load

    return _load(path, device, weights)


__all__ = ["__version__", "hookimpl", "load"]
