"""The training loop's prefetcher (bicycle.train.prefetch) and uint8 staging: the same batches in the same
order made ahead, checkpoints at the consumed position, resume exact with a background producer."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import bicycle.train.loop as loop
from bicycle import io
from bicycle.build import build_dataset
from bicycle.data.aligned import AlignedDataset
from bicycle.data.shapes import ShapesDataset
from bicycle.plugins import get_plugins
from bicycle.train.data import BatchStream
from bicycle.train.prefetch import Prefetcher, for_device, options_for
from tiny import spy_kl_scales, tiny_config


def _stream(start: int = 0) -> BatchStream:
    return BatchStream(ShapesDataset(32, "train", seed=0, length=10), 2, seed=3, start_step=start)


@pytest.mark.parametrize("background", [False, True])
def test_prefetched_batches_are_the_streams_in_order(background):
    plain = _stream()
    want = [plain.next() for _ in range(7)]  # crosses an epoch (5 batches per epoch)
    with Prefetcher(_stream(), background=background) as p:
        got = [p.next() for _ in range(7)]
        assert p.position() == (1, 2)  # consumed 7 of 5 per epoch, whatever was made ahead
        if background:
            assert p.stream.step >= 7
    for (a, b), (wa, wb) in zip(got, want):
        assert torch.equal(a, wa) and torch.equal(b, wb)


def test_the_position_counts_consumed_batches_from_a_resumed_start():
    with Prefetcher(_stream(start=4), background=True) as p:
        p.next()
        assert p.position() == divmod(5, 5)


def test_a_failing_batch_is_raised_in_the_consumer_and_the_thread_ends():
    class Broken(ShapesDataset):
        def get_batch(self, indices):
            raise OSError("image 0007.png is truncated")

    p = Prefetcher(BatchStream(Broken(32, length=4), 2, 0), background=True)
    with pytest.raises(OSError, match="truncated"):
        p.next()
    p.close()
    assert not any(t.name == "bicycle-prefetch" and t.is_alive() for t in threading.enumerate())


def test_close_stops_a_producer_blocked_on_a_full_queue():
    p = Prefetcher(_stream(), background=True, depth=1)
    p.next()
    p.close()
    assert not p._thread.is_alive()


def _aligned(tmp_path, channels: int) -> AlignedDataset:
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    for i in range(3):
        shape = (20, 40, 3) if channels == 3 else (20, 40)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "train" / f"{i}.png")
    return AlignedDataset(tmp_path, "train", 16, flip=True, load_size=20, seed=1, progress=False)


@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_staging_normalised_as_on_the_device_equals_the_float_batch(tmp_path, channels):
    ds = _aligned(tmp_path, channels)
    for epoch in (0, 1):  # different crops and flips per epoch
        ds.set_epoch(epoch)
        a, b = ds.get_batch([0, 1, 2])
        a8, b8 = ds.get_batch_uint8([0, 1, 2])
        assert a8.dtype == torch.uint8 and a8.shape == a.shape and b8.shape == b.shape
        # GraphedStep.load_uint8's formula, on the CPU here
        for x8, x in ((a8, a), (b8, b)):
            assert torch.equal(x8.to(torch.float32).div_(127.5).sub_(1.0), x)


def test_the_loop_stages_uint8_on_cuda_only_where_the_dataset_can(tmp_path):
    ds, shapes = _aligned(tmp_path, 3), ShapesDataset(32, length=4)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert options_for(ds, cuda) == {"background": True, "pin": True, "uint8": True}
    assert options_for(shapes, cuda) == {"background": True, "pin": True, "uint8": False}
    assert options_for(ds, cpu) == {"background": False, "pin": False, "uint8": False}
    with for_device(BatchStream(ds, 2, 0), cpu) as p:
        assert p._thread is None and p.next()[0].dtype == torch.float32


def test_resume_is_exact_with_a_background_producer(tmp_path, monkeypatch):
    """As tests/test_checkpoint.py's resume test, with batches made ahead by a thread: Ctrl-C after step 2 of 4,
    then --resume gives the weights and optimizer states of 4 straight steps, bit for bit."""
    monkeypatch.setattr(loop, "prefetcher_for", lambda stream, device: Prefetcher(stream, background=True, depth=2))
    cfg = tiny_config(**{"train.steps": 4, "optim.decay_start": 0.25, "train.checkpoint_every": 100})
    straight = loop.train(cfg, tmp_path / "a", echo=lambda _m: None)
    spy_kl_scales(monkeypatch, interrupt_after=2)
    stopped = loop.train(cfg, tmp_path / "b", echo=lambda _m: None)
    assert stopped.interrupted and io.load_checkpoint(tmp_path / "b").step == 2
    monkeypatch.undo()
    monkeypatch.setattr(loop, "prefetcher_for", lambda stream, device: Prefetcher(stream, background=True, depth=2))
    loop.train(io.load_checkpoint(tmp_path / "b").config, tmp_path / "b", resume=True, echo=lambda _m: None)
    one, two = io.load_checkpoint(tmp_path / "a"), io.load_checkpoint(tmp_path / "b")
    assert straight.step == two.step == 4
    per_epoch = len(build_dataset(cfg, get_plugins().registry, "train")) // cfg.train.batch_size
    assert (int(two.metadata["data_epoch"]), int(two.metadata["data_offset"])) == divmod(4, per_epoch)
    for k, v in one.tensors.items():
        if not k.startswith("rng."):
            torch.testing.assert_close(two.tensors[k], v, rtol=0, atol=0, msg=k)
