"""Image files: listing, the start-up check, decoding to uint8 arrays, and loading inputs for ``sample``.

The start-up check (:func:`check_images`) decodes every file completely, on a thread per CPU, and keeps
only verdicts between runs (:mod:`bicycle.data.verdicts`): a truncated file is found before training,
not in the middle of it.

Every problem is reported as one :class:`~bicycle.errors.DataError` whose message names the file or
folder that is wrong.

Conventions shared by every loader here:

* Extensions: ``.png .jpg .jpeg .bmp .webp`` (any case). Files whose name starts with ``.`` (hidden
  files, macOS ``._*`` resource forks) are ignored. Folders are *not* searched recursively. A broken
  symlink with an image name is listed (the check then names it as bad) rather than skipped unseen.
* Order: files are sorted by name (plain code-point order), so every machine sees the same order.
* Channels: grayscale images (modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) give 1 channel; every
  other mode gives 3 (``RGB``; ``RGBA``/``LA`` drop alpha; palette ``P``/``PA``, ``CMYK``, ``YCbCr`` ... are
  converted to RGB). 16-bit grayscale is scaled to 8 bits (``v >> 8``).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


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
    paths = sorted((p for p in entries if is_image_file(p) and (p.is_file() or _is_broken_link(p))),
                   key=lambda p: p.name)
    if not paths and not allow_empty:
        raise DataError(
            f"image folder {folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths


@dataclass(frozen=True)
class ImageInfo:
    """What one fully decoded image file is."""

    path: Path
    width: int
    height: int
    mode: str

    @property
    def channels(self) -> int:
        return channels_of_mode(self.mode)


@dataclass(frozen=True)
class BadImage:
    """A file the start-up check refused: ``reason`` is short (for lists), ``message`` one line naming the path."""

    path: Path
    reason: str
    message: str


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
    if "truncated" in detail:  # Pillow: "image file is truncated (N bytes not processed)"
        return "truncated"
    return "truncated or not an image" + (f" ({detail})" if detail else "")


def _cannot_read(path: Path, reason: str) -> BadImage:
    return BadImage(path, reason, f"cannot read image {path}: {reason}")


def unreadable(path: Path, e: BaseException) -> BadImage:
    """``path`` could not be opened or decoded (``e``), with why."""
    broken_link = isinstance(e, FileNotFoundError) and path.is_symlink()
    return _cannot_read(path, "broken symlink" if broken_link else _read_reason(e))


def decode_check(path: Path) -> ImageInfo:
    """Decode ``path`` completely (``load()``: a truncated file fails here, unlike a header check) and
    say what it is; the pixels are dropped. Raises what Pillow or the OS raise."""
    with Image.open(path) as im:
        im.load()
        width, height = im.size
        return ImageInfo(path, width, height, im.mode)


def _verdict(path: Path) -> ImageInfo | BadImage:
    try:
        info = decode_check(path)  # looked up at call time (tests count the calls)
    except Exception as e:  # Pillow raises many types for bad files (OSError, SyntaxError, ValueError ...)
        return unreadable(path, e)
    if info.width < 1 or info.height < 1:
        return _cannot_read(path, f"empty image ({info.width}x{info.height})")
    return info


def side_by_side_problem(info: ImageInfo) -> BadImage | None:
    """The pix2pix layout: A|B side by side, each half ``width // 2`` wide, so the width must be even."""
    size = f"{info.width}x{info.height}"
    if info.width < 2:
        return BadImage(info.path, f"{size}: too narrow for A|B",
                        f"image {info.path} is {size}: too narrow to hold A|B side by side")
    if info.width % 2:
        return BadImage(info.path, f"{size}: odd width, A|B needs equal halves",
                        f"image {info.path} is {size}: the aligned layout needs A|B side by side with equal "
                        f"halves, so the width must be even (it is usually 2 x height)")
    return None


def _common_folder(paths: Sequence[Path]) -> str:
    parents = {str(p.parent) for p in paths}
    return parents.pop() if len(parents) == 1 else "several folders"


SHOWN_BAD = 5  # bad files named in one message; the rest are counted


def bad_images_message(bad: Sequence[BadImage], total: int, where: str) -> str:
    """One line: the bad file's own message, or a count and the first :data:`SHOWN_BAD` with their reasons."""
    if len(bad) == 1:
        return bad[0].message
    one_folder = _common_folder([b.path for b in bad]) == where
    names = ", ".join(f"{b.path.name if one_folder else b.path} ({b.reason})" for b in bad[:SHOWN_BAD])
    more = f" and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
    return f"{len(bad)} of {total} images in {where} cannot be used: {names}{more}"


@dataclass
class ImageCheck:
    """The start-up check's result: ``good`` and ``bad`` in the order given, ``stats`` (size, mtime_ns) of
    every file that could be stat'ed, ``cached``: how many verdicts came from the cache."""

    good: list[ImageInfo]
    bad: list[BadImage]
    stats: dict[Path, tuple[int, int]]
    cached: int


def check_workers() -> int:
    """Decoding threads: one per CPU this process may use (Pillow releases the GIL while decoding)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(32, cpus))


class _ProgressLine:
    """``\\r{head} P%`` at each crossed 10% mark (at most ~10 updates), ended with ``tail`` and a newline."""

    def __init__(self, stream: TextIO | None, head: str, total: int) -> None:
        self.stream, self.head, self.total, self.done = stream, head, total, 0
        self._show()

    def _show(self, end: str = "") -> None:
        if self.stream is not None:
            self.stream.write(f"\r{self.head} {100 * self.done // self.total}%{end}")
            self.stream.flush()

    def advance(self, k: int) -> None:
        before, self.done = self.done, self.done + k
        if k and self.done < self.total and 10 * self.done // self.total > 10 * before // self.total:
            self._show()

    def close(self, tail: str) -> None:
        self._show(f"{tail}\n")


_cache_note_given = False


def _cache_note(stream: TextIO | None, problem: str) -> None:
    global _cache_note_given
    if stream is not None and not _cache_note_given:
        _cache_note_given = True
        stream.write(f"note: no image-check cache ({problem}): every start decodes every image\n")


def _stat(path: Path) -> tuple[int, int] | BadImage:
    try:
        st = path.stat()
    except OSError as e:
        return unreadable(path, e)
    return st.st_size, st.st_mtime_ns


def _decode_all(paths: list[Path], workers: int) -> Iterator[ImageInfo | BadImage]:
    """:func:`_verdict` of each path, in order, on ``workers`` threads."""
    if workers <= 1 or len(paths) <= 1:
        yield from map(_verdict, paths)
        return
    pool = ThreadPoolExecutor(max_workers=min(workers, len(paths)), thread_name_prefix="bicycle-check")
    try:
        yield from pool.map(_verdict, paths)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: do not decode the rest first


def _stream_of(progress: bool | TextIO | None) -> TextIO | None:
    if progress is True:
        return sys.stderr
    if progress is False or progress is None:
        return None
    return progress


def check_images(
    paths: Sequence[str | Path],
    progress: bool | TextIO = True,
    *,
    side_by_side: bool = False,
    label: str | None = None,
    workers: int | None = None,
) -> ImageCheck:
    """Decode every file completely (in parallel; files unchanged since a previous check are not decoded
    again, see :mod:`bicycle.data.verdicts`) and sort them into good and bad. Never raises for a bad file.

    progress: True writes ``checking N images in DIR ... P%`` on stderr, updated in place (at most ~10
    updates) and ended with a newline (and ``(K cached, B bad)`` when there are any); a file object writes
    there instead; False writes nothing. side_by_side: also require the aligned A|B layout
    (:func:`side_by_side_problem`). Raises DataError naming the folder when ``paths`` is empty.
    """
    from bicycle.data.verdicts import VerdictCache

    paths = [Path(p) for p in paths]
    where = label if label is not None else (_common_folder(paths) if paths else "")
    if not paths:
        raise DataError(f"no images to check in {where or 'the given list'}")
    stream = _stream_of(progress)
    n = len(paths)
    line = _ProgressLine(stream, f"checking {n} image{'s' if n != 1 else ''} in {where} ...", n)
    caches = {folder: VerdictCache(folder) for folder in dict.fromkeys(p.parent for p in paths)}
    verdicts: list[ImageInfo | BadImage | None] = [None] * n
    stats: dict[Path, tuple[int, int]] = {}
    todo: list[int] = []
    cached = 0
    for i, p in enumerate(paths):
        st = _stat(p)
        if isinstance(st, BadImage):
            verdicts[i] = st
            continue
        stats[p] = st
        hit = caches[p.parent].get(p.name, *st)
        if hit is None:
            todo.append(i)
        else:
            verdicts[i] = ImageInfo(p, *hit)
            cached += 1
    line.advance(n - len(todo))
    decoded = _decode_all([paths[i] for i in todo], workers or check_workers())
    try:
        for i, v in zip(todo, decoded):
            verdicts[i] = v
            if isinstance(v, ImageInfo):
                caches[v.path.parent].put(v.path.name, *stats[v.path], (v.width, v.height, v.mode))
            line.advance(1)
    finally:
        decoded.close()  # an interrupted check stops its threads now
    for cache in caches.values():
        problem = cache.save()
        if problem:
            _cache_note(stream, problem)
    good: list[ImageInfo] = []
    bad: list[BadImage] = []
    for v in verdicts:
        if side_by_side and isinstance(v, ImageInfo):
            v = side_by_side_problem(v) or v
        if isinstance(v, ImageInfo):
            good.append(v)
        else:
            assert v is not None
            bad.append(v)
    counts = [f"{cached} cached"] * bool(cached) + [f"{len(bad)} bad"] * bool(bad)
    line.close(f" ({', '.join(counts)})" if counts else "")
    return ImageCheck(good, bad, stats, cached)


def scan_images(
    paths: Sequence[str | Path],
    progress: bool | TextIO = True,
    *,
    side_by_side: bool = False,
    label: str | None = None,
) -> list[ImageInfo]:
    """:func:`check_images`, then ONE DataError naming the bad files (see :func:`bad_images_message`) if any."""
    paths = [Path(p) for p in paths]
    check = check_images(paths, progress, side_by_side=side_by_side, label=label)
    if check.bad:
        where = label if label is not None else _common_folder(paths)
        raise DataError(bad_images_message(check.bad, len(paths), where))
    return check.good


def convert_image(im: Image.Image, channels: int | None = None) -> Image.Image:
    """A decoded Pillow image -> mode ``L`` (1 channel) or ``RGB`` (3 channels), by the module's channel rules.

    channels: None keeps the image's own channel count; 1 or 3 converts (RGB -> L by ITU-R 601 luma,
    L -> RGB by repetition)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
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
    want = channels if channels is not None else channels_of_mode(img.mode)
    target = "L" if want == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def open_image(path: str | Path, channels: int | None = None) -> Image.Image:
    """Decode ``path`` fully into a Pillow image of mode ``L`` (1 channel) or ``RGB`` (3 channels), converted
    as :func:`convert_image` says. Raises DataError naming the file."""
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels!r}")
    try:
        with Image.open(path) as im:
            im.load()
            return convert_image(im, channels)
    except DataError:
        raise
    except Exception as e:
        raise DataError(unreadable(path, e).message) from e


def image_to_tensor(img: Image.Image, image_size: int, channels: int, resample: str = "bicubic") -> torch.Tensor:
    """A Pillow image -> float32 [channels, image_size, image_size] in [-1, 1] (u8 / 127.5 - 1): converted to
    ``channels`` (:func:`convert_image`) and resized (``resample``) when its size differs."""
    img = convert_image(img, channels)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), RESAMPLE[resample])
    return torch.from_numpy(to_array(img)).permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0


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
    paths = input_paths(path_or_dir)
    out = torch.empty(len(paths), channels, image_size, image_size, dtype=torch.float32)
    for i, p in enumerate(paths):
        out[i] = image_to_tensor(open_image(p, channels), image_size, channels, resample)
    return out
