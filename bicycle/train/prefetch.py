"""The training loop's batch source: :class:`BatchStream` batches made ahead of the step that uses them.

On CUDA a background thread makes the next batches (``depth`` 2: double-buffered) and pins them, so
that making a batch overlaps the replayed step and the copy into the step's buffers is asynchronous;
with ``uint8`` (a dataset with ``get_batch_uint8``) the staged batches are uint8, normalised on the device.
On a CPU the batch is made when it is asked for: there the step and the data share the same cores.
Either way the batches and their order are those of the stream, and :meth:`Prefetcher.position`
counts the batches *consumed*, not those made ahead, so a checkpoint resumes at the right batch.
"""
from __future__ import annotations

import queue
import threading
import time

import torch
from torch import Tensor

from bicycle.train.data import BatchStream

_STOP_POLL_S = 0.1


def options_for(dataset: object, device: torch.device) -> dict[str, bool]:
    """The loop's choice: on CUDA a background thread, pinned memory and uint8 staging where the dataset
    offers it; elsewhere inline float batches."""
    cuda = device.type == "cuda"
    return {"background": cuda, "pin": cuda, "uint8": cuda and hasattr(dataset, "get_batch_uint8")}


def for_device(stream: BatchStream, device: torch.device) -> Prefetcher:
    return Prefetcher(stream, **options_for(stream.dataset, device))


class Prefetcher:
    """``next()`` -> (A [B, Ca, S, S], B [B, Cb, S, S]); ``wait_s``: seconds ``next()`` spent waiting."""

    def __init__(self, stream: BatchStream, *, background: bool, pin: bool = False, uint8: bool = False,
                 depth: int = 2) -> None:
        self.stream, self.pin, self.uint8 = stream, pin, uint8
        self.consumed = stream.step
        self.wait_s = 0.0
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce, name="bicycle-prefetch", daemon=True)
            self._thread.start()

    def _make(self) -> tuple[Tensor, Tensor]:
        a, b = self.stream.next(uint8=self.uint8)
        return (a.pin_memory(), b.pin_memory()) if self.pin else (a, b)

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                item: object = self._make()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=_STOP_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> tuple[Tensor, Tensor]:
        t0 = time.perf_counter()
        if self._queue is None:
            item: object = self._make()
        else:
            item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
            raise item
        self.consumed += 1
        return item  # type: ignore[return-value]

    def position(self) -> tuple[int, int]:
        """(epoch, batch within epoch) of the next batch to be consumed."""
        return divmod(self.consumed, self.stream.per_epoch)

    def close(self) -> None:
        """Stop the background thread (batches made ahead are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
