"""What a dataset plugin provides.

A dataset yields aligned pairs (A, B) as float32 tensors in [-1, 1]: A [Ca, H, W], B [Cb, H, W], where
H = W = ``image_size``. Datasets may also provide an exact *oracle* (``mode_of``/``is_valid``) that the
evaluation uses to count distinct plausible outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor

Split = Literal["train", "val"]


@dataclass(frozen=True)
class DatasetRequest:
    """What the engine asks a dataset factory for.

    path: a folder for file-based datasets (None for procedural ones); split: "train" or "val";
    image_size: the square size every A and B must have; direction: "AtoB" or "BtoA";
    flip: random horizontal flips (training only); load_size: resize to this before a random crop
    of image_size (None: resize straight to image_size); seed: for procedural/augmentation randomness;
    options: dataset-specific settings (e.g. {"modes": 8} for the built-in dataset).
    """

    split: Split
    image_size: int
    path: str | None = None
    direction: Literal["AtoB", "BtoA"] = "AtoB"
    flip: bool = False
    load_size: int | None = None
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()

    def option(self, key: str, default: object) -> object:
        return dict(self.options).get(key, default)


@runtime_checkable
class PairedDataset(Protocol):
    """A map-style dataset of aligned pairs.

    ``__getitem__(i)`` -> (A [Ca, H, W], B [Cb, H, W]) float32 in [-1, 1].
    ``get_batch(indices)`` -> (A [N, Ca, H, W], B [N, Cb, H, W]); datasets may vectorise it.
    Optional ``get_batch_uint8(indices)``: the same batch as uint8 in [0, 255] before ``x / 127.5 - 1``;
    on CUDA the training loop then copies a quarter of the bytes and normalises on the device.
    Augmentation randomness is a function of (index, epoch), set with ``set_epoch``, so that a
    resumed run sees exactly the same data.
    """

    a_channels: int
    b_channels: int
    image_size: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]: ...

    def get_batch(self, indices: list[int]) -> tuple[Tensor, Tensor]: ...

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class Oracle(Protocol):
    """An exact judge of outputs, for datasets whose B has known discrete modes given A.

    ``num_modes``: K, the number of modes of B for an A (their probabilities: ``mode_probabilities``, if
    the dataset defines it; else they are taken as equally likely).
    ``mode_of(A, B)``: A [N, Ca, H, W], B [N, Cb, H, W] -> int64 [N], the mode B is closest to.
    ``is_valid(A, B)``: -> bool [N], whether B is a plausible output for A (right structure, one mode).
    """

    num_modes: int

    def mode_of(self, a: Tensor, b: Tensor) -> Tensor: ...

    def is_valid(self, a: Tensor, b: Tensor) -> Tensor: ...


def oracle_of(dataset: object) -> Oracle | None:
    """The dataset's oracle if it provides one."""
    return dataset if isinstance(dataset, Oracle) else None
