"""A deterministic batch stream: fixed batch size (static shapes), per-epoch permutation from the seed,
resumable from a step count."""
from __future__ import annotations

import torch
from torch import Tensor

from bicycle.errors import DataError


class BatchStream:
    """Yields (A [B, Ca, S, S], B [B, Cb, S, S]) for steps ``start_step``, ``start_step + 1``, ...

    Epoch e visits a permutation of the dataset drawn from (seed, e); the last incomplete batch of
    an epoch is dropped so every batch has the same shape.

    ``shard``: (rank, world size) under data parallelism. Global batch t is the stream's batch t at
    ``batch_size * world size``; rank r gets rows [r * batch_size, (r + 1) * batch_size) of it.
    """

    def __init__(self, dataset, batch_size: int, seed: int, start_step: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = shard
        self.global_batch = batch_size * self.world
        self.per_epoch = len(dataset) // self.global_batch
        if self.per_epoch < 1:
            each = f" ({self.world} ranks x {batch_size})" if self.world > 1 else ""
            raise DataError(f"the dataset has {len(dataset)} pairs, fewer than one batch of {self.global_batch}{each}")
        self.step = start_step
        self._epoch = -1
        self._perm: Tensor | None = None

    def position(self) -> tuple[int, int]:
        """(epoch, batch within epoch) of the next batch."""
        return divmod(self.step, self.per_epoch)

    def next(self, uint8: bool = False) -> tuple[Tensor, Tensor]:
        """The next batch; ``uint8``: through the dataset's ``get_batch_uint8`` (see PairedDataset)."""
        epoch, k = self.position()
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.dataset), generator=g)
            self._epoch = epoch
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
        assert self._perm is not None
        first = k * self.global_batch + self.rank * self.batch_size
        idx = self._perm[first:first + self.batch_size].tolist()
        self.step += 1
        return self.dataset.get_batch_uint8(idx) if uint8 else self.dataset.get_batch(idx)
