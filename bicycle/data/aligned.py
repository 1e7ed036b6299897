"""The ``aligned`` dataset: the pix2pix folder layout, each file holding A|B side by side.

Layout::

    ROOT/train/*.png|jpg|jpeg|bmp|webp     the "train" split
    ROOT/val/*.png|...                     the "val" split

Each file is split at ``width // 2``: the left half is A, the right half is B (``direction="BtoA"``
swaps them). The width must be even; it is usually ``2 * height`` but the halves need not be square,
since each half is resized to a square anyway.

Fallback: when ROOT has neither a ``train/`` nor a ``val/`` folder but directly contains images, those
images are used for *every* split (train and val see the same files; val is still centre-cropped and
never flipped). A note saying so is written on stderr when ``progress`` is on. When ROOT has one of
``train/``/``val/`` but not the requested one, that is a :class:`~bicycle.errors.MissingSplitError` naming
the missing folder (evaluation then says so and uses ``train/``: :func:`bicycle.build.build_eval_dataset`).

Start-up check: every file of the split is decoded completely (:func:`bicycle.data.images.check_images`).
``bad_images="error"`` (the default): one DataError naming the bad files; ``"skip"``: they are left out
(``bad_images`` lists them, a note on stderr counts them) and the others are used. ``files`` records
(name, size, mtime_ns) of the files used, the data fingerprint a checkpoint keeps.

Channels: every file must have the same channel count (grayscale -> 1, anything else -> 3; see
:mod:`bicycle.data.images`); ``a_channels == b_channels`` is that count, unless ``channels`` asks for
others: each half is then converted after the split (RGB -> 1 by ITU-R 601 luma, grey -> 3 by
repetition), as the original's ``--input_nc 1`` reads RGB edges2shoes files.

Augmentation (as in pix2pix): A and B are each resized to ``load_size`` x ``load_size`` (``load_size``
None: ``image_size``) with bicubic resampling, then the same random ``image_size`` crop and, when
``flip``, the same random horizontal flip are applied to both. The randomness is a pure function of
``(seed, epoch, index)`` (see :meth:`AlignedDataset.crop_params`), so a resumed run is exact. The val
split uses the centre crop and no flip.

Performance: decoding + resizing happens lazily, once per image; the resized uint8 arrays are kept in
an in-memory LRU cache bounded by ``cache_bytes`` (default 1 GiB). :meth:`AlignedDataset.get_batch`
gathers the cached arrays and calls :func:`bicycle.ops.prepare_batch` once for A and once for B, which
crops, flips and normalises in one pass.
"""
from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bicycle import ops
from bicycle.config import BAD_IMAGES
from bicycle.data.base import DatasetRequest
from bicycle.data.images import (RESAMPLE, BadImage, ImageInfo, bad_images_message, check_images, list_images,
                                 convert_image, open_image, to_array)
from bicycle.errors import ConfigError, DataError, MissingSplitError

DEFAULT_CACHE_BYTES = 1 << 30
SPLITS = ("train", "val")


def resolve_split_folder(root: str | Path, split: str, *, progress: bool = True) -> Path:
    """The folder holding ``split``'s images under ``root`` (see the module docstring for the fallback)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"dataset path {root} is not a folder")
    wanted = root / split
    if wanted.is_dir():
        return wanted
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        raise MissingSplitError(
            f"dataset folder {root} has no {split}/ folder (it has {', '.join(s + '/' for s in present)}); "
            f"expected {wanted}",
            root=str(root),
        )
    if not list_images(root, allow_empty=True):
        raise DataError(
            f"dataset folder {root} has no train/ or val/ folder and holds no images directly"
        )
    if progress:
        print(
            f"note: {root} has no train/ or val/ folder; using its images for the {split} split",
            file=sys.stderr,
        )
    return root


class AlignedDataset:
    """A|B side-by-side images (pix2pix layout). See the module docstring.

    ``__getitem__(i)`` -> (A [Ca, S, S], B [Cb, S, S]) float32 in [-1, 1]; ``get_batch(indices)`` stacks
    them, vectorised. ``paths`` lists the files in index order.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 256,
        *,
        direction: str = "AtoB",
        flip: bool = False,
        load_size: int | None = None,
        seed: int = 0,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        resample: str = "bicubic",
        progress: bool = True,
        impl: str = "auto",
        bad_images: str = "error",
        channels: tuple[int | None, int | None] = (None, None),
    ) -> None:
        if direction not in ("AtoB", "BtoA"):
            raise ConfigError(f"direction must be 'AtoB' or 'BtoA', not {direction!r}")
        if image_size < 1:
            raise ConfigError(f"image_size must be positive, not {image_size}")
        load = image_size if load_size is None else int(load_size)
        if load < image_size:
            raise ConfigError(f"load_size ({load}) must be at least image_size ({image_size})")
        if resample not in RESAMPLE:
            raise ConfigError(f"unknown resample {resample!r}; choose one of {', '.join(RESAMPLE)}")
        if cache_bytes < 0:
            raise ConfigError(f"cache_bytes must be >= 0, not {cache_bytes}")
        if bad_images not in BAD_IMAGES:
            raise ConfigError(f"bad_images must be one of {', '.join(BAD_IMAGES)}, not {bad_images!r}")
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.load_size = load
        self.direction = direction
        self.flip = bool(flip) and split == "train"
        self.seed = int(seed)
        self.epoch = 0
        self.cache_bytes = int(cache_bytes)
        self.resample = resample
        self.impl = impl

        self.folder = resolve_split_folder(self.root, split, progress=progress)
        listed = list_images(self.folder)
        check = check_images(listed, progress, side_by_side=True, label=str(self.folder))
        self.bad_images: list[BadImage] = check.bad
        if check.bad:
            summary = bad_images_message(check.bad, len(listed), str(self.folder))
            if bad_images == "error" or not check.good:
                raise DataError(summary)  # skip mode with nothing left: "N of N images ... cannot be used"
            if progress:
                print(f"note: {summary}; using the other {len(check.good)} (bad_images=skip)", file=sys.stderr)
        self.infos: list[ImageInfo] = check.good
        self.paths: list[Path] = [info.path for info in check.good]
        self.files: list[tuple[str, int, int]] = [(p.name, *check.stats[p]) for p in self.paths]
        first = self.infos[0]
        for info in self.infos[1:]:
            if info.channels != first.channels:
                raise DataError(
                    f"image {info.path} has {info.channels} channel{'s' if info.channels > 1 else ''} "
                    f"(mode {info.mode}) but {first.path} has {first.channels} (mode {first.mode}); "
                    f"all images of a dataset must have the same channel count"
                )
        self.file_channels = first.channels
        want_a, want_b = channels
        for c in (want_a, want_b):
            if c not in (None, 1, 3):
                raise ConfigError(f"channels must be 1 or 3, not {c}")
        self.a_channels, self.b_channels = want_a or first.channels, want_b or first.channels

        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    # -- protocol -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        a, b = self.get_batch([index])
        return a[0], b[0]

    def get_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """(A [N, Ca, S, S], B [N, Cb, S, S]) for ``indices``: one ``prepare_batch`` call each for A and B."""
        idx = [self._check_index(i) for i in indices]
        if not idx:
            s = self.image_size
            return (torch.empty(0, self.a_channels, s, s), torch.empty(0, self.b_channels, s, s))
        pairs = [self._resized(i) for i in idx]
        params = [self.crop_params(i) for i in idx]
        top = torch.tensor([p[0] for p in params], dtype=torch.int64)
        left = torch.tensor([p[1] for p in params], dtype=torch.int64)
        flip = torch.tensor([p[2] for p in params], dtype=torch.bool)
        a_u8 = torch.from_numpy(np.stack([p[0] for p in pairs]))
        b_u8 = torch.from_numpy(np.stack([p[1] for p in pairs]))
        a = ops.prepare_batch(a_u8, top, left, flip, self.image_size, impl=self.impl)
        b = ops.prepare_batch(b_u8, top, left, flip, self.image_size, impl=self.impl)
        return a, b

    def get_batch_uint8(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """The same crops and flips as :meth:`get_batch`, not normalised: uint8 (A [N, Ca, S, S], B [N, Cb, S, S])
        in [0, 255], a quarter of the bytes to copy to a GPU; ``x / 127.5 - 1`` there gives ``get_batch``'s values."""
        idx = [self._check_index(i) for i in indices]
        s = self.image_size
        a_out = torch.empty(len(idx), self.a_channels, s, s, dtype=torch.uint8)
        b_out = torch.empty(len(idx), self.b_channels, s, s, dtype=torch.uint8)
        for k, i in enumerate(idx):
            top, left, flip = self.crop_params(i)
            for src, out in zip(self._resized(i), (a_out, b_out)):
                crop = torch.from_numpy(src[top:top + s, left:left + s])
                out[k] = (crop.flip(1) if flip else crop).permute(2, 0, 1)
        return a_out, b_out

    # -- augmentation ---------------------------------------------------------------------------

    def crop_params(self, index: int, epoch: int | None = None) -> tuple[int, int, bool]:
        """(top, left, flip) for ``index`` at ``epoch`` (default: the current one).

        Train: uniform crop corner in ``[0, load_size - image_size]`` and, if ``flip``, a fair coin, drawn
        from a generator seeded with ``(seed, epoch, index)``. Val: the centre crop, never flipped.
        """
        index = self._check_index(index)
        span = self.load_size - self.image_size
        if self.split != "train":
            return span // 2, span // 2, False
        ep = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, ep & 0xFFFFFFFFFFFFFFFF, index])
        top, left = (int(v) for v in rng.integers(0, span + 1, size=2))
        flip = bool(rng.random() < 0.5) if self.flip else False
        return top, left, flip

    # -- decoding + cache -----------------------------------------------------------------------

    def _check_index(self, index: int) -> int:
        n = len(self.paths)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for aligned dataset of {n} images in {self.folder}")
        return i

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode file ``index`` and resize both halves: uint8 (A [L, L, Ca], B [L, L, Cb]), L = load_size.

        Direction is applied (BtoA returns the right half as A). Not cached; see :meth:`_resized`.
        """
        path = self.paths[self._check_index(index)]
        img = open_image(path, self.file_channels)
        w, h = img.size
        half = w // 2
        if half < 1:
            raise DataError(f"image {path} is {w}x{h}: too narrow to hold A|B side by side")
        size = (self.load_size, self.load_size)
        method = RESAMPLE[self.resample]
        left = img.crop((0, 0, half, h))
        right = img.crop((half, 0, 2 * half, h))
        if self.direction == "BtoA":
            left, right = right, left
        a = to_array(convert_image(left.resize(size, method) if left.size != size else left, self.a_channels))
        b = to_array(convert_image(right.resize(size, method) if right.size != size else right, self.b_channels))
        return a, b

    def _resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            hit = self._cache.get(index)
            if hit is not None:
                self._cache.move_to_end(index)
                return hit
        pair = self.load_pair(index)
        nbytes = pair[0].nbytes + pair[1].nbytes
        if nbytes <= self.cache_bytes:
            with self._lock:
                if index not in self._cache:
                    self._cache[index] = pair
                    self._cached_bytes += nbytes
                    while self._cached_bytes > self.cache_bytes:
                        _, (oa, ob) = self._cache.popitem(last=False)
                        self._cached_bytes -= oa.nbytes + ob.nbytes
        return pair

    @property
    def cached_bytes(self) -> int:
        """Bytes of resized images held in the cache now (never above ``cache_bytes``)."""
        return self._cached_bytes

    def __getstate__(self) -> dict:
        # DataLoader workers get a fresh, empty cache (and a new lock) instead of a pickled copy.
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_cached_bytes"] = 0
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"AlignedDataset({str(self.folder)!r}, split={self.split!r}, n={len(self)}, "
            f"image_size={self.image_size}, load_size={self.load_size}, direction={self.direction!r}, "
            f"channels={self.a_channels})"
        )


def build_aligned(request: DatasetRequest) -> AlignedDataset:
    """Dataset factory for the ``aligned`` plugin: ``request.path`` is the dataset root.

    Options (``request.options``): ``cache_mb`` (int, default 1024): memory budget of the resized-image
    cache in MiB; ``resample`` ("bicubic" | "bilinear" | "nearest" | "lanczos"); ``progress`` (bool,
    default True): the start-up check's progress line on stderr; ``impl``: the ``prepare_batch`` impl;
    ``bad_images`` ("error" | "skip", default "error"): what the start-up check does with bad files;
    ``channels`` ((A, B) with None entries: the files' own count): convert each half to these channels.
    """
    if request.path is None:
        raise ConfigError("the aligned dataset needs a dataset folder (a path with train/ and val/)")
    cache_mb = request.option("cache_mb", DEFAULT_CACHE_BYTES >> 20)
    try:
        cache_bytes = int(float(cache_mb) * (1 << 20))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"aligned option cache_mb must be a number, not {cache_mb!r}") from e
    return AlignedDataset(
        request.path,
        request.split,
        request.image_size,
        direction=request.direction,
        flip=request.flip,
        load_size=request.load_size,
        seed=request.seed,
        cache_bytes=cache_bytes,
        resample=str(request.option("resample", "bicubic")),
        progress=bool(request.option("progress", True)),
        channels=tuple(request.option("channels", (None, None))),  # type: ignore[arg-type]
        impl=str(request.option("impl", "auto")),
        bad_images=str(request.option("bad_images", "error")),
    )
