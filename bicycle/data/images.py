"""Image files: listing, the start-up check, decoding to uint8 arrays, and loading inputs for ``sample``.

Every problem is reported as one :class:`~bicycle.errors.DataError` whose message names the file or
folder that is wrong.

Conventions shared by every loader here:

* Extensions: ``.png .jpg .jpeg .bmp .webp`` (any case). Files whose name starts with ``.`` (hidden
  files, macOS ``._*`` resource forks) are ignored. Folders are *not* searched recursively.
* Order: files are sorted by name (plain code-point order), so every machine sees the same order.
* Channels: grayscale images (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) give 1 channel; every
  other mode gives 3 (``RGB``; ``RGBA``/``LA`` drop alpha; palette ``P``/``PA``, ``CMYK``, ``YCbCr`` ... are
  converted to RGB). 16-bit grayscale is scaled to 8 bits (``v >> 8``).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from PIL import Image

from bicycle.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})

RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def channels_of_mode(mode: str) -> int:
    """1 for grayscale Pillow modes, 3 for everything else (see the module docstring)."""
    if mode in _GRAY_MODES or mode.startswith("I;16"):
        return 1
    return 3


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path, *, allow_empty: bool = False) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Raises DataError naming the folder when it does not exist, is not a folder, or (unless
    ``allow_empty``) holds no image files.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise DataError(f"cannot list image folder {folder}: {e.strerror or e}") from e
    paths = sorted((p for p in entries if is_image_file(p) and p.is_file()), key=lambda p: p.name)
    if not paths and not allow_empty:
        raise DataError(
            f"image folder {folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths


@dataclass(frozen=True)
class ImageInfo:
    """What the header of one image file says."""

    path: Path
    width: int
    height: int
    mode: str

    @property
    def channels(self) -> int:
        return channels_of_mode(self.mode)


def _read_reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a folder"
    if isinstance(e, Image.DecompressionBombError):
        return f"image too large ({e})"
    if isinstance(e, Image.UnidentifiedImageError):
        return "truncated or not an image"
    detail = str(e).strip()
    return "truncated or not an image" + (f" ({detail})" if detail else "")


def read_info(path: str | Path) -> ImageInfo:
    """Header-level check of one file: open it, read size and mode, ``verify()`` it (no full decode)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            mode = im.mode
            im.verify()
    except Exception as e:  # Pillow raises many types for bad files (OSError, SyntaxError, ValueError ...)
        raise DataError(f"cannot read image {path}: {_read_reason(e)}") from e
    if width < 1 or height < 1:
        raise DataError(f"cannot read image {path}: empty image ({width}x{height})")
    return ImageInfo(path, width, height, mode)


def check_side_by_side(info: ImageInfo) -> None:
    """The pix2pix layout: A|B side by side, each half ``width // 2`` wide, so the width must be even."""
    if info.width < 2:
        raise DataError(
            f"image {info.path} is {info.width}x{info.height}: too narrow to hold A|B side by side"
        )
    if info.width % 2:
        raise DataError(
            f"image {info.path} is {info.width}x{info.height}: the aligned layout needs A|B side by side "
            f"with equal halves, so the width must be even (it is usually 2 x height)"
        )


def _common_folder(paths: Sequence[Path]) -> str:
    parents = {str(p.parent) for p in paths}
    return parents.pop() if len(parents) == 1 else "several folders"


def scan_images(
    paths: Sequence[str | Path],
    progress: bool | TextIO = True,
    *,
    side_by_side: bool = False,
    label: str | None = None,
) -> list[ImageInfo]:
    """Check every file at header level and return what each header says, in order.

    progress: True writes ``checking N images in DIR ... P%`` on stderr, updated in place (at most ~10
    updates) and ended with a newline; a file object writes there instead; False writes nothing.
    side_by_side: also require the aligned A|B layout (:func:`check_side_by_side`).
    Raises ONE DataError naming the first bad file (and how many more were bad), or naming the folder
    when ``paths`` is empty.
    """
    paths = [Path(p) for p in paths]
    where = label if label is not None else (_common_folder(paths) if paths else "")
    if not paths:
        raise DataError(f"no images to check in {where or 'the given list'}")
    stream: TextIO | None
    if progress is True:
        stream = sys.stderr
    elif progress is False or progress is None:
        stream = None
    else:
        stream = progress
    n = len(paths)
    head = f"checking {n} image{'s' if n != 1 else ''} in {where} ..."
    infos: list[ImageInfo] = []
    errors: list[DataError] = []

    def show(done: int, end: str = "") -> None:
        if stream is not None:
            stream.write(f"\r{head} {100 * done // n}%{end}")
            stream.flush()

    show(0)
    for k, p in enumerate(paths, 1):
        try:
            info = read_info(p)
            if side_by_side:
                check_side_by_side(info)
            infos.append(info)
        except DataError as e:
            errors.append(e)
        if k == n:
            show(k, " failed\n" if errors else "\n")
        elif 10 * k // n > 10 * (k - 1) // n:  # crossed a 10% mark: at most 9 updates in between
            show(k)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more bad image{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise DataError(f"{first}{more}") from first
    return infos


def open_image(path: str | Path, channels: int | None = None) -> Image.Image:
    """Decode ``path`` fully into a Pillow image of mode ``L`` (1 channel) or ``RGB`` (3 channels).

    channels: None keeps the file's own channel count (see the module docstring); 1 or 3 converts
    (RGB -> L by ITU-R 601 luma, L -> RGB by repetition). Raises DataError naming the file.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":
                arr = np.asarray(im)
                if mode == "I":
                    arr = np.clip(arr, 0, 65535)
                img = Image.fromarray((arr.astype(np.uint32) >> 8).astype(np.uint8), mode="L")
            elif channels_of_mode(mode) == 1:
                img = im.convert("L")
            else:
                img = im.convert("RGB") if mode != "RGB" else im.copy()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read image {path}: {_read_reason(e)}") from e
    want = channels if channels is not None else channels_of_mode(img.mode)
    target = "L" if want == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def to_array(img: Image.Image) -> np.ndarray:
    """Pillow ``L``/``RGB`` image -> uint8 [H, W, C] (C = 1 or 3), contiguous."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def load_image_file(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Decode one image file -> uint8 numpy [H, W, C], C = 1 (grayscale) or 3; DataError names the file."""
    return to_array(open_image(path, channels))


def input_paths(path_or_dir: str | Path) -> list[Path]:
    """The files :func:`load_input_images` would load, in order: the file itself, or a folder's images."""
    p = Path(path_or_dir)
    if not p.exists():
        raise DataError(f"input {p} does not exist")
    if p.is_dir():
        return list_images(p)
    if not is_image_file(p):
        raise DataError(
            f"input {p} is not an image file (expected one of {', '.join(IMAGE_EXTENSIONS)})"
        )
    return [p]


def load_input_images(
    path_or_dir: str | Path,
    image_size: int,
    channels: int,
    *,
    resample: str = "bicubic",
) -> torch.Tensor:
    """Load single (not side-by-side) images for translation without ground truth.

    path_or_dir: one image file or a folder of images (see :func:`input_paths` for the order).
    Each image is converted to ``channels`` (1 or 3) and resized to ``image_size`` x ``image_size``.
    Returns float32 [N, channels, image_size, image_size] in [-1, 1]. Errors name the file or folder.
    """
    if channels not in (1, 3):
        raise DataError(f"cannot load inputs with {channels} channels: only 1 or 3 are supported")
    if image_size < 1:
        raise DataError(f"cannot load inputs at image size {image_size}")
    method = RESAMPLE[resample]
    paths = input_paths(path_or_dir)
    out = torch.empty(len(paths), channels, image_size, image_size, dtype=torch.float32)
    for i, p in enumerate(paths):
        img = open_image(p, channels)
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), method)
        arr = torch.from_numpy(to_array(img))
        out[i] = arr.permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0
    return out
