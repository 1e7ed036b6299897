"""Triton kernels against the references: on CUDA when present, else under TRITON_INTERPRET=1 on CPU.

CI sets BICYCLE_REQUIRE_TRITON=1: then these tests fail instead of skipping when Triton cannot run.
GPU-only tests (``@pytest.mark.gpu``) capture each op in a CUDA graph, replay it and compare.
"""
from __future__ import annotations

import pytest
import torch

from conftest_ops import triton_required, use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()

from bicycle import ops  # noqa: E402
from bicycle.kernels import _common  # noqa: E402
from bicycle.kernels import lsgan as lsgan_mod  # noqa: E402
from bicycle.kernels import reparam_kl as reparam_mod  # noqa: E402
from bicycle.kernels.lsgan import lsgan_d_ref, lsgan_ref  # noqa: E402
from bicycle.kernels.reparam_kl import reparam_kl_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_WHY = ops.unavailable_reason("triton", DEVICE, "reparam_kl")
needs_triton = pytest.mark.skipif(_WHY is not None and not triton_required(), reason=f"Triton cannot run: {_WHY}")

# dtype -> (rtol, atol) against the reference evaluated in float64 on the same (rounded) inputs
TOL = {torch.float32: (2e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (2e-2, 2e-2)}


def test_triton_can_run_when_required():
    """Guard for CI: with BICYCLE_REQUIRE_TRITON=1 a missing/misconfigured Triton is a failure."""
    if not triton_required():
        pytest.skip("BICYCLE_REQUIRE_TRITON is not set")
    assert _common.HAS_TRITON, "BICYCLE_REQUIRE_TRITON=1 but triton is not importable"
    assert _WHY is None, f"BICYCLE_REQUIRE_TRITON=1 but the Triton kernels cannot run on {DEVICE}: {_WHY}"


@pytest.fixture(params=["one_block", "small_blocks"])
def blocks(request, monkeypatch):
    """Also run with 16-element blocks so that small tensors span many programs (partials, segment starts)."""
    if request.param == "small_blocks":
        for mod in (reparam_mod, lsgan_mod):
            monkeypatch.setattr(mod, "block_size", lambda n, device, gpu_block: 16)
    return request.param


def _inputs(shape, dtype, noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = (shape[0], shape[1] * 2) if noncontig else shape
    ts = [torch.randn(full, generator=g, dtype=torch.float64).to(dtype).to(DEVICE) for _ in range(3)]
    return [t[:, ::2] for t in ts] if noncontig else ts


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (3, 1), (7, 13), (64, 8)])
def test_reparam_kl_matches_reference(shape, dtype, blocks):
    _check_reparam(shape, dtype)


@needs_triton
def test_reparam_kl_noncontiguous():
    mu = _check_reparam((5, 7), torch.float32, noncontig=True)
    assert not mu.is_contiguous()


def _check_reparam(shape, dtype, noncontig=False):
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs(shape, dtype, noncontig))
    gz = torch.randn(shape, dtype=torch.float64).to(dtype).to(DEVICE)
    gkl = torch.tensor(0.7, dtype=dtype, device=DEVICE)
    z, kl = ops.reparam_kl(mu, lv, eps, 0.01, impl="triton")
    grads = torch.autograd.grad((z, kl), (mu, lv, eps), (gz, gkl))
    ref_in = [t.detach().double().requires_grad_(True) for t in (mu, lv, eps)]
    zr, klr = reparam_kl_ref(*ref_in, 0.01)
    grads_r = torch.autograd.grad((zr, klr), ref_in, (gz.double(), gkl.double()))
    rtol, atol = TOL[dtype]
    assert z.dtype == dtype and kl.dtype == dtype and kl.shape == () and z.device.type == DEVICE
    torch.testing.assert_close(z.double(), zr, rtol=rtol, atol=atol)
    torch.testing.assert_close(kl.double(), klr, rtol=rtol, atol=atol)
    for a, b in zip(grads, grads_r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    return mu


@needs_triton
def test_reparam_kl_grad_of_z_only_and_kl_only():
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((6, 4), torch.float64))
    for pick in (0, 1):
        out = ops.reparam_kl(mu, lv, eps, 0.5, impl="triton")[pick].sum()
        ref = reparam_kl_ref(mu, lv, eps, 0.5)[pick].sum()
        kw = dict(allow_unused=True, materialize_grads=True)
        for a, b in zip(torch.autograd.grad(out, (mu, lv, eps), **kw), torch.autograd.grad(ref, (mu, lv, eps), **kw)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_triton
def test_reparam_kl_gradcheck_float64():
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((3, 2), torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.reparam_kl(a, b, c, 0.3, impl="triton"), (mu, lv, eps))


def _preds(sizes, dtype, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, h, w in sizes:
        t = torch.randn(n, 1, h, w * (2 if noncontig else 1), generator=g, dtype=torch.float64).to(dtype).to(DEVICE)
        out.append((t[..., ::2] if noncontig else t).detach().requires_grad_(True))
    return out


SCALES = [[(1, 1, 1)], [(2, 5, 7), (2, 3, 4)], [(2, 9, 9), (2, 5, 5), (2, 3, 3)]]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("sizes", SCALES, ids=lambda s: f"{len(s)}scales")
def test_lsgan_matches_reference(sizes, dtype, blocks):
    preds = _preds(sizes, dtype)
    for target in (0.0, 1.0):
        loss = ops.lsgan(preds, target, impl="triton")
        grads = torch.autograd.grad(loss * 1.5, preds)
        ref_in = [p.detach().double().requires_grad_(True) for p in preds]
        loss_r = lsgan_ref(ref_in, target)
        grads_r = torch.autograd.grad(loss_r * 1.5, ref_in)
        rtol, atol = TOL[dtype]
        assert loss.dtype == dtype and loss.shape == ()
        torch.testing.assert_close(loss.double(), loss_r, rtol=rtol, atol=atol)
        for a, b in zip(grads, grads_r):
            torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@needs_triton
@pytest.mark.parametrize("sizes", SCALES, ids=lambda s: f"{len(s)}scales")  # 3 scales: 6 segments, 2 launches
@pytest.mark.parametrize("noncontig", [False, True])
def test_lsgan_d_matches_reference(sizes, noncontig, blocks):
    fake, real = _preds(sizes, torch.float32, 1, noncontig), _preds(sizes, torch.float32, 2, noncontig)
    assert all(p.is_contiguous() != noncontig for p in fake if p.numel() > 1)
    loss = ops.lsgan_d(fake, real, impl="triton")
    loss_r = lsgan_d_ref(fake, real)
    torch.testing.assert_close(loss, loss_r, rtol=2e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(loss, fake + real), torch.autograd.grad(loss_r, fake + real)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


@needs_triton
def test_lsgan_gradcheck_float64():
    preds = _preds([(1, 3, 3), (1, 2, 1)], torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ops.lsgan([a, b], 1.0, impl="triton"), tuple(preds))
    assert torch.autograd.gradcheck(lambda a, b: ops.lsgan_d([a], [b], impl="triton"), tuple(preds))


# ----------------------------------------------------------------------------------- CUDA graphs (GPU)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

def _capture(fn):
    """Warm up on a side stream (compiles the kernels), then capture ``fn`` in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reparam_kl_in_cuda_graph(dtype):
    shape, w = (8, 8), 0.01
    mu, lv = (torch.randn(shape, device="cuda", dtype=dtype).requires_grad_(True) for _ in range(2))
    eps, gz = torch.randn(shape, device="cuda", dtype=dtype), torch.randn(shape, device="cuda", dtype=dtype)
    gkl = torch.tensor(0.5, device="cuda", dtype=dtype)

    def step():
        z, kl = ops.reparam_kl(mu, lv, eps, w, impl="triton")
        return (z, kl, *torch.autograd.grad((z, kl), (mu, lv), (gz, gkl)))

    graph, out = _capture(step)
    rtol, atol = TOL[dtype]
    for _ in range(3):  # new inputs and new noise (drawn by torch outside the graph) on every replay
        with torch.no_grad():
            mu.normal_()
            lv.normal_()
        eps.normal_()
        graph.replay()
        ref_in = [t.detach().double().requires_grad_(True) for t in (mu, lv)]
        zr, klr = reparam_kl_ref(*ref_in, eps.double(), w)
        ref = (zr, klr, *torch.autograd.grad((zr, klr), ref_in, (gz.double(), gkl.double())))
        for a, b in zip(out, ref):
            torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n_scales", [1, 2, 3])
def test_lsgan_and_lsgan_d_in_cuda_graph(n_scales):
    sizes = [(2, 30 >> s, 30 >> s) for s in range(n_scales)]
    fake = [torch.randn(n, 1, h, w, device="cuda").requires_grad_(True) for n, h, w in sizes]
    real = [torch.randn(n, 1, h, w, device="cuda").requires_grad_(True) for n, h, w in sizes]

    def step():
        lg = ops.lsgan(fake, 1.0, impl="triton")
        ld = ops.lsgan_d(fake, real, impl="triton")
        return (lg, ld, *torch.autograd.grad(lg + 2 * ld, fake + real))

    graph, out = _capture(step)
    for _ in range(3):
        with torch.no_grad():
            for p in fake + real:
                p.normal_()
        graph.replay()
        f64 = [p.detach().double().requires_grad_(True) for p in fake + real]
        lg, ld = lsgan_ref(f64[:n_scales], 1.0), lsgan_d_ref(f64[:n_scales], f64[n_scales:])
        ref = (lg, ld, *torch.autograd.grad(lg + 2 * ld, f64))
        for a, b in zip(out, ref):
            torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-6)
