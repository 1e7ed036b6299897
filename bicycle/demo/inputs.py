"""What the demo page turns into model inputs: a drawing on the canvas, an uploaded file, a reference image.
No Gradio here: plain Pillow and torch, tested on their own.

Polarity: the training inputs' background is their commonest value (a silhouette or an outline is drawn
light on dark, an edge map of a photograph dark on light); the brush draws the opposite extreme.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bicycle.data.images import convert_image, open_image
from bicycle.errors import DataError

MAX_UPLOAD_PIXELS = 25_000_000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
CANVAS = 256  # px on the page


@dataclass(frozen=True)
class Polarity:
    """background and stroke: grey levels 0-255 of the canvas and of the brush."""

    background: int
    stroke: int

    @property
    def stroke_hex(self) -> str:
        return "#{0:02x}{0:02x}{0:02x}".format(self.stroke)

    def inverted(self) -> Polarity:
        return Polarity(self.stroke, self.background)

    def blank(self, size: int = CANVAS) -> Image.Image:
        return Image.new("RGB", (size, size), (self.background,) * 3)


def polarity_of(inputs: torch.Tensor | None, invert: bool = False) -> Polarity:
    """inputs: A [N, C, S, S] in [-1, 1] (the run's validation inputs), or None (light strokes on black).
    The background is the side of 0 their median falls on."""
    light_background = inputs is not None and inputs.numel() > 0 and float(inputs.float().median()) > 0
    p = Polarity(255, 0) if light_background else Polarity(0, 255)
    return p.inverted() if invert else p


def brush_size(image_size: int) -> int:
    """Canvas px of a brush at least 2 px wide at the model's size."""
    return max(2, -(-5 * CANVAS // (2 * image_size)))


def drawing(value: object, polarity: Polarity) -> Image.Image:
    """The editor's value (Gradio's {"background", "layers", "composite"} of Pillow images, or one image)
    -> an RGB image: the composite over the canvas background. Raises DataError when nothing was drawn."""
    img = value.get("composite") if isinstance(value, dict) else value
    if not isinstance(img, Image.Image):
        raise DataError("draw an input on the canvas or upload an image first")
    if img.mode in ("RGBA", "LA", "P"):
        base = Image.new("RGBA", img.size, (polarity.background,) * 3 + (255,))
        img = Image.alpha_composite(base, img.convert("RGBA"))
    img = img.convert("RGB")
    if np.asarray(img.convert("L")).std() == 0:
        raise DataError("the canvas is empty: draw an input (or upload one) first")
    return img


def fill_enclosed(img: Image.Image, polarity: Polarity) -> Image.Image:
    """Fill every region the strokes enclose (background pixels not connected to the border), for models whose
    inputs are filled regions. img: RGB; returns RGB."""
    grey = np.asarray(img.convert("L")).astype(np.int16)
    background = np.abs(grey - polarity.background) < 64
    reach = np.zeros_like(background)
    reach[0, :], reach[-1, :], reach[:, 0], reach[:, -1] = background[0, :], background[-1, :], background[:, 0], background[:, -1]
    while True:  # flood from the border through background pixels (4-connected)
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= background
        if (grown == reach).all():
            break
        reach = grown
    out = np.where(reach, polarity.background, polarity.stroke).astype(np.uint8)
    return Image.fromarray(out).convert("RGB")


def read_upload(path: str | Path | None, what: str = "the upload") -> Image.Image:
    """A file uploaded to the page -> an RGB Pillow image, decoded by the project's own image loading; a file
    that is missing, too large, not an image or corrupt raises DataError with one line naming it."""
    if path is None:
        raise DataError(f"{what}: no file given")
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    if size > MAX_UPLOAD_BYTES:
        raise DataError(f"{what} ({path.name}) is {size / 2**20:.1f} MiB; the demo takes files up to "
                        f"{MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - not an image: open_image below names the reason
        w = h = 0
    if w * h > MAX_UPLOAD_PIXELS:
        raise DataError(f"{what} ({path.name}) is {w}x{h} px; the demo takes images up to {MAX_UPLOAD_PIXELS // 10**6} MP")
    try:
        return convert_image(open_image(path), 3)
    except DataError as e:
        raise DataError(f"{what}: {e}") from None
