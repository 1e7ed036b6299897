"""Data parallelism keeps what a step computes: 2 gloo ranks against one process at the global batch."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import ddp_helpers as h

WORLD = 2


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_ranks(tmp_path, kl_factor: bool = True, norm: str = "none"):
    out = tmp_path / f"ranks_{kl_factor}_{norm}"
    out.mkdir()
    mp.spawn(h.rank_main, args=(WORLD, str(tmp_path / f"init_{kl_factor}_{norm}"), str(out), kl_factor, norm),
             nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], [torch.load(out / f"noise{r}.pt") for r in range(WORLD)]


def mismatches(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float = 1e-9) -> list[str]:
    assert got.keys() == want.keys()
    return [k for k in want if not torch.allclose(got[k], want[k], rtol=rtol, atol=1e-18)]


def test_two_ranks_make_the_updates_of_one_process_at_the_global_batch(tmp_path):
    """Without norm layers every parameter carries a gradient: all of them, and Adam's moments, within rtol 1e-9."""
    want, _ = h.reference(WORLD, "none")
    assert any(k.startswith("opt.E.") for k in want) and any(k.startswith("D2.") for k in want)
    (rank0, rank1), (noise0, noise1) = run_ranks(tmp_path)
    assert mismatches(rank0, want) == []  # every parameter and Adam moment, rtol 1e-9
    assert mismatches(rank1, rank0, rtol=0) == []  # the ranks hold the same model
    assert not torch.equal(noise0["eps"], noise1["eps"]) and not torch.equal(noise0["z"], noise1["z"])
    (bad, _), _ = run_ranks(tmp_path, kl_factor=False)
    wrong = mismatches(bad, want)
    assert wrong and all(k.startswith(("E.", "opt.E.", "G.", "opt.G.", "D", "opt.D")) for k in wrong)
    assert any(k.startswith("E.") for k in wrong)  # without the world-size factor the KL gradient is halved


def test_with_instance_norm_every_parameter_the_norm_does_not_cancel_matches(tmp_path):
    """The paper's instance norm: conv biases in front of it have an analytically zero gradient (rounding noise
    that Adam turns into full steps, in one process as in two), so they are left out; the rest match."""
    want, inert = h.reference(WORLD, "instance")
    assert len(inert) > 5 and "G.downs.1.1.bias" in inert
    (rank0, _), _ = run_ranks(tmp_path, norm="instance")
    params = [k for k in want if not k.startswith("opt.") and k not in inert]
    # relative to each tensor's scale: weights feeding the norm have elements whose gradient is near-cancelled too
    off = {k: float((rank0[k] - want[k]).abs().max() / want[k].abs().max()) for k in params}
    assert max(off.values()) < 1e-7, sorted(off.items(), key=lambda kv: -kv[1])[:3]


def test_the_reference_leaves_the_default_dtype_alone():
    assert torch.get_default_dtype() == torch.float32


def test_each_rank_reads_its_slice_of_the_global_batch():
    from bicycle.train.data import BatchStream
    ds = list(range(40))

    class Data:
        def __len__(self):
            return 40

        def get_batch(self, idx):
            return torch.tensor(idx), torch.tensor(idx)

    whole = BatchStream(Data(), 6, seed=3, start_step=5)
    parts = [BatchStream(Data(), 3, seed=3, start_step=5, shard=(r, 2)) for r in range(2)]
    for _ in range(12):  # across epoch boundaries (6 global batches of 6 per epoch)
        g = whole.next()[0]
        assert torch.equal(torch.cat([p.next()[0] for p in parts]), g)
    assert parts[0].position() == whole.position() and len(ds) == 40
