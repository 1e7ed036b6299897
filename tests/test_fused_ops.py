"""The fused ops (C++ extension and Triton kernels) against the references: forward, every gradient, errors.

Each shared test runs once per implementation: ``cpp-cpu`` (bicycle._C) and ``triton-cuda`` on a CUDA
machine, else ``triton-cpu`` under TRITON_INTERPRET=1. ``triton-*-16blocks`` also runs Triton with
16-element blocks, so that small tensors span many programs (partials, segment starts).
CI sets BICYCLE_REQUIRE_TRITON=1: then the Triton tests fail instead of skipping when Triton cannot run.
``@pytest.mark.gpu`` marks what needs a CUDA device: the ``triton-cuda`` cases and the CUDA-graph tests,
which capture each op in a CUDA graph, replay it and compare.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from conftest_ops import triton_required, use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()

from bicycle import ops  # noqa: E402
from bicycle.kernels import _common  # noqa: E402
from bicycle.kernels._common import loss_dtype  # noqa: E402
from bicycle.kernels import lsgan as lsgan_mod  # noqa: E402
from bicycle.kernels import reparam_kl as reparam_mod  # noqa: E402
from bicycle.kernels.lsgan import lsgan_d_ref, lsgan_ref  # noqa: E402
from bicycle.kernels.prepare_batch import prepare_batch_ref  # noqa: E402
from bicycle.errors import OpUnavailableError  # noqa: E402
from bicycle.kernels.reparam_kl import reparam_kl_ref  # noqa: E402
from bicycle.train.graph import capturing  # noqa: E402

_C, _C_WHY = ops._ext()
needs_cpp = pytest.mark.skipif(_C is None, reason=f"the C++ extension did not build: {_C_WHY}")

TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_TRITON_WHY = ops.unavailable_reason("triton", TRITON_DEVICE, "reparam_kl")
needs_triton = pytest.mark.skipif(_TRITON_WHY is not None and not triton_required(),
                                  reason=f"Triton cannot run: {_TRITON_WHY}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# dtype -> (rtol, atol) against the reference evaluated in float64 on the same (rounded) inputs
TOL = {torch.float32: (2e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (2e-2, 2e-2)}
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class Fused:
    """One implementation under test: the ``impl`` passed to bicycle.ops and where its tensors live."""

    impl: str
    device: str
    small_blocks: bool = False


def _param(fused: Fused):
    marks = [needs_cpp] if fused.impl == "cpp" else [needs_triton]
    if fused.device == "cuda":
        marks.append(pytest.mark.gpu)
    suffix = "-16blocks" if fused.small_blocks else ""
    return pytest.param(fused, marks=marks, id=f"{fused.impl}-{fused.device}{suffix}")


CPP = Fused("cpp", "cpu")
TRITON = Fused("triton", TRITON_DEVICE)
TRITON_16 = Fused("triton", TRITON_DEVICE, small_blocks=True)
each_impl = pytest.mark.parametrize("fused", [_param(CPP), _param(TRITON)], indirect=True)
# The 16-element blocks only on small tensors: the interpreter costs ~5 ms per program.
each_impl_and_block_size = pytest.mark.parametrize("fused", [_param(CPP), _param(TRITON), _param(TRITON_16)],
                                                   indirect=True)


@pytest.fixture
def fused(request, monkeypatch) -> Fused:
    if request.param.small_blocks:
        for mod in (reparam_mod, lsgan_mod):
            monkeypatch.setattr(mod, "block_size", lambda n, device, gpu_block: 16)
    return request.param


def test_triton_can_run_when_required():
    """Guard for CI: with BICYCLE_REQUIRE_TRITON=1 a missing/misconfigured Triton is a failure."""
    if not triton_required():
        pytest.skip("BICYCLE_REQUIRE_TRITON is not set")
    assert _common.HAS_TRITON, "BICYCLE_REQUIRE_TRITON=1 but triton is not importable"
    assert _TRITON_WHY is None, (
        f"BICYCLE_REQUIRE_TRITON=1 but the Triton kernels cannot run on {TRITON_DEVICE}: {_TRITON_WHY}")


# ------------------------------------------------------------------------------------------ reparam_kl
def _inputs(shape, dtype, device="cpu", noncontig=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = (shape[0], shape[1] * 2) if noncontig else shape
    ts = [torch.randn(full, generator=g, dtype=torch.float64).to(dtype).to(device) for _ in range(3)]
    if noncontig:
        ts = [t[:, ::2] for t in ts]
        assert not ts[0].is_contiguous()
    return ts


def _check_reparam(fused: Fused, shape, dtype, noncontig=False, w=0.01):
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs(shape, dtype, fused.device, noncontig))
    gz = torch.randn(shape, dtype=torch.float64).to(dtype).to(fused.device)
    gkl = torch.tensor(0.7, dtype=dtype, device=fused.device)
    z, kl = ops.reparam_kl(mu, lv, eps, w, impl=fused.impl)
    grads = torch.autograd.grad((z, kl), (mu, lv, eps), (gz, gkl))
    ref_in = [t.detach().double().requires_grad_(True) for t in (mu, lv, eps)]
    zr, klr = reparam_kl_ref(*ref_in, w)
    grads_r = torch.autograd.grad((zr, klr), ref_in, (gz.double(), gkl.double()))
    rtol, atol = TOL[dtype]
    assert z.dtype == dtype and kl.dtype == loss_dtype(dtype) and z.shape == mu.shape and kl.shape == ()
    assert z.device.type == fused.device
    torch.testing.assert_close(z.double(), zr, rtol=rtol, atol=atol)
    torch.testing.assert_close(kl.double(), klr, rtol=rtol, atol=atol)
    for a, b in zip(grads, grads_r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (2, 1), (3, 1), (7, 13), (33, 8), (64, 8)], ids=_shape_id)
@each_impl_and_block_size
def test_reparam_kl_matches_reference(fused, shape, dtype):
    _check_reparam(fused, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@each_impl
def test_reparam_kl_matches_reference_large(fused, dtype):
    """12297 elements: several GPU blocks for Triton, several vector chunks and threads for C++."""
    _check_reparam(fused, (4099, 3), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@pytest.mark.parametrize("shape", [(5, 7), (9, 5)], ids=_shape_id)
@each_impl
def test_reparam_kl_noncontiguous(fused, shape, dtype):
    _check_reparam(fused, shape, dtype, noncontig=True)


@each_impl
def test_reparam_kl_grad_of_z_only_and_kl_only(fused):
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((6, 4), torch.float64, fused.device))
    kw = dict(allow_unused=True, materialize_grads=True)
    for pick in (0, 1):
        out = ops.reparam_kl(mu, lv, eps, 0.5, impl=fused.impl)[pick].sum()
        ref = reparam_kl_ref(mu, lv, eps, 0.5)[pick].sum()
        for a, b in zip(torch.autograd.grad(out, (mu, lv, eps), **kw), torch.autograd.grad(ref, (mu, lv, eps), **kw)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@each_impl
def test_reparam_kl_gradcheck_float64(fused):
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((3, 2), torch.float64, fused.device))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.reparam_kl(a, b, c, 0.3, impl=fused.impl), (mu, lv, eps))


@needs_cpp
def test_cpp_reparam_kl_large_and_extreme_values():
    """The vectorised exp in float32: overflow to inf, underflow to 0, within 2 ulp in between."""
    lv = torch.linspace(-230.0, 200.0, 100_003)
    mu = torch.zeros_like(lv)
    eps = torch.ones_like(lv)
    z, _ = ops.reparam_kl(mu, lv, eps, impl="cpp")
    zr = torch.exp(0.5 * lv.double())
    finite = zr < torch.finfo(torch.float32).max
    assert torch.isinf(z[~finite]).all()
    torch.testing.assert_close(z[finite].double(), zr[finite], rtol=3e-7, atol=1e-44)
    z_nan, _ = ops.reparam_kl(torch.zeros(3), torch.tensor([float("nan"), 0.0, float("-inf")]), torch.ones(3), impl="cpp")
    assert torch.isnan(z_nan[0]) and z_nan[1] == 1 and z_nan[2] == 0


@needs_cpp
def test_cpp_reparam_kl_same_result_for_any_thread_count():
    mu, lv, eps = _inputs((40_000, 8), torch.float32)
    before = torch.get_num_threads()
    try:
        outs = []
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            outs.append(ops.reparam_kl(mu, lv, eps, 0.01, impl="cpp"))
    finally:
        torch.set_num_threads(before)
    for z, kl in outs[1:]:
        assert torch.equal(z, outs[0][0]) and torch.equal(kl, outs[0][1])


# ----------------------------------------------------------------------------- reparam_kl free bits
FREE_BITS = 0.5


def _fb_inputs(shape, dtype, device="cpu", seed=0):
    """[N, nz] inputs whose even dimensions sit well below the 0.5-nat floor and odd ones well above it
    (no batch mean within a finite-difference step or a bfloat16 rounding of the floor)."""
    g = torch.Generator().manual_seed(seed)
    n, nz = shape
    small = (torch.arange(nz) % 2 == 0).to(torch.float64)
    mu = torch.randn(shape, generator=g, dtype=torch.float64) * (0.1 * small + 0.2 * (1 - small)) + 2.0 * (1 - small)
    lv = torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device) for t in (mu, lv, eps)]


def _batch_mean_kl(mu, lv):
    mu, lv = mu.double(), lv.double()
    return (-0.5 * (1 + lv - mu**2 - lv.exp())).mean(0)


def _check_free_bits(impl: str, device: str, shape, dtype, w=0.01, f=FREE_BITS):
    mu, lv, eps = (t.requires_grad_(True) for t in _fb_inputs(shape, dtype, device))
    m = _batch_mean_kl(mu.detach(), lv.detach())
    below = m < f
    if shape[1] > 1:
        assert below.any() and (~below).any()
    assert ((m - f).abs() > 0.05).all()
    gz = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    gkl = torch.tensor(0.7, dtype=dtype, device=device)
    z, kl = ops.reparam_kl(mu, lv, eps, w, f, impl=impl)
    grads = torch.autograd.grad((z, kl), (mu, lv, eps), (gz, gkl))
    ref_in = [t.detach().double().requires_grad_(True) for t in (mu, lv, eps)]
    zr, klr = reparam_kl_ref(*ref_in, w, f)
    grads_r = torch.autograd.grad((zr, klr), ref_in, (gz.double(), gkl.double()))
    rtol, atol = TOL[dtype]
    assert z.dtype == dtype and kl.dtype == loss_dtype(dtype) and z.shape == mu.shape and kl.shape == ()
    assert z.device.type == device
    torch.testing.assert_close(z.double(), zr, rtol=rtol, atol=atol)
    torch.testing.assert_close(kl.double(), klr, rtol=rtol, atol=atol)
    for a, b in zip(grads, grads_r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    # the floor binds: the KL differs from the plain sum, and the dimensions under it get no KL gradient
    if below.any():
        assert not torch.allclose(klr, reparam_kl_ref(*ref_in, w)[1])
        dmu_kl = torch.autograd.grad(ops.reparam_kl(mu, lv, eps, w, f, impl=impl)[1], mu)[0]
        assert (dmu_kl[:, below.to(device)] == 0).all()
        if (~below).any():
            assert (dmu_kl[:, (~below).to(device)] != 0).any()


def test_reparam_kl_ref_free_bits_formula():
    """kl = w * N * SUM_j max(m_j, f), written out; f = 0 is the old formula bit for bit."""
    mu, lv, eps = _fb_inputs((6, 5), torch.float64)
    w = 0.3
    m = _batch_mean_kl(mu, lv)
    _, kl = reparam_kl_ref(mu, lv, eps, w, FREE_BITS)
    torch.testing.assert_close(kl, w * 6 * torch.clamp(m, min=FREE_BITS).sum(), rtol=1e-14, atol=1e-14)
    old = torch.sum(mu.pow(2).add(lv.exp()).mul(-1).add(1).add(lv)).mul(-0.5) * w
    assert torch.equal(reparam_kl_ref(mu, lv, eps, w, 0.0)[1], old)
    assert torch.equal(reparam_kl_ref(mu, lv, eps, w)[1], old)
    # with every dimension above a tiny floor it is the plain sum again (up to rounding)
    torch.testing.assert_close(reparam_kl_ref(mu, lv, eps, w, 1e-9)[1], old, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@each_impl
def test_reparam_kl_free_bits_zero_is_the_plain_sum_bit_for_bit(fused, dtype):
    mu, lv, eps = _inputs((7, 13), dtype, fused.device)
    plain = ops.reparam_kl(mu, lv, eps, 0.01, impl=fused.impl)
    zero = ops.reparam_kl(mu, lv, eps, 0.01, 0.0, impl=fused.impl)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("shape", [(1, 2), (2, 1), (7, 13), (33, 8)], ids=_shape_id)
@each_impl_and_block_size
def test_reparam_kl_free_bits_matches_reference(fused, shape, dtype):
    _check_free_bits(fused.impl, fused.device, shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@each_impl
def test_reparam_kl_free_bits_matches_reference_large(fused, dtype):
    """4099 rows: several row blocks (Triton), several row chunks and threads (C++)."""
    _check_free_bits(fused.impl, fused.device, (4099, 3), dtype)


def test_reparam_kl_ref_free_bits_gradcheck_float64():
    mu, lv, eps = (t.requires_grad_(True) for t in _fb_inputs((3, 4), torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: reparam_kl_ref(a, b, c, 0.3, FREE_BITS), (mu, lv, eps))


@each_impl
def test_reparam_kl_free_bits_gradcheck_float64(fused):
    mu, lv, eps = (t.requires_grad_(True) for t in _fb_inputs((3, 4), torch.float64, fused.device))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.reparam_kl(a, b, c, 0.3, FREE_BITS, impl=fused.impl),
                                    (mu, lv, eps))


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_cpp),
                                  pytest.param("triton", marks=needs_triton)])
def test_reparam_kl_free_bits_tie_passes_through(impl):
    """m_j == f exactly (mu = 1, logvar = 0: k = 0.5): the gradient passes; just below: zero."""
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    mu = torch.tensor([[1.0, 0.5], [1.0, 0.5]], dtype=torch.float64, device=device, requires_grad=True)
    lv = torch.zeros_like(mu, requires_grad=True)
    eps = torch.zeros_like(mu)
    _, kl = ops.reparam_kl(mu, lv, eps, 1.0, 0.5, impl=impl)
    assert float(kl.detach()) == 2 * (0.5 + 0.5)
    dmu, dlv = torch.autograd.grad(kl, (mu, lv))
    assert torch.equal(dmu.cpu(), torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    assert torch.equal(dlv.cpu(), torch.zeros(2, 2, dtype=torch.float64))  # exp(0) - 1 = 0 in column 0 too


@each_impl
def test_reparam_kl_free_bits_grad_of_z_only_and_kl_only(fused):
    mu, lv, eps = (t.requires_grad_(True) for t in _fb_inputs((6, 4), torch.float64, fused.device))
    kw = dict(allow_unused=True, materialize_grads=True)
    for pick in (0, 1):
        out = ops.reparam_kl(mu, lv, eps, 0.5, FREE_BITS, impl=fused.impl)[pick].sum()
        ref = reparam_kl_ref(mu, lv, eps, 0.5, FREE_BITS)[pick].sum()
        for a, b in zip(torch.autograd.grad(out, (mu, lv, eps), **kw), torch.autograd.grad(ref, (mu, lv, eps), **kw)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_cpp),
                                  pytest.param("triton", marks=needs_triton)])
def test_reparam_kl_free_bits_rejects_bad_values_and_shapes(impl):
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    x = torch.zeros(3, 2, device=device)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="free_bits must be finite and >= 0"):
            ops.reparam_kl(x, x, x, 1.0, bad, impl=impl)
    y = torch.zeros(3, 2, 2, device=device)
    with pytest.raises(ValueError, match=r"free_bits > 0 needs \[N, nz\] inputs, got shape \[3, 2, 2\]"):
        ops.reparam_kl(y, y, y, 1.0, 0.5, impl=impl)
    ops.reparam_kl(y, y, y, 1.0, 0.0, impl=impl)  # f = 0: any shape, as before


@needs_cpp
def test_cpp_reparam_kl_free_bits_refuses_an_extension_without_it():
    """No silent fallback: a bicycle._C built before free bits raises instead of dropping the floor."""
    class OldExt:
        reparam_kl_forward = staticmethod(_C.reparam_kl_forward)
        reparam_kl_backward = staticmethod(_C.reparam_kl_backward)

    backend = reparam_mod.CppBackend(OldExt())
    mu, lv, eps = _fb_inputs((3, 2), torch.float32)
    with pytest.raises(ops.OpUnavailableError, match="no free bits"):
        reparam_mod.reparam_kl_fused(mu, lv, eps, 1.0, backend, FREE_BITS)
    reparam_mod.reparam_kl_fused(mu, lv, eps, 1.0, backend)  # f = 0 still runs


@needs_cpp
def test_cpp_reparam_kl_free_bits_same_result_for_any_thread_count():
    mu, lv, eps = _fb_inputs((40_000, 8), torch.float32)
    before = torch.get_num_threads()
    try:
        outs = []
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            outs.append(ops.reparam_kl(mu, lv, eps, 0.01, FREE_BITS, impl="cpp"))
    finally:
        torch.set_num_threads(before)
    for z, kl in outs[1:]:
        assert torch.equal(z, outs[0][0]) and torch.equal(kl, outs[0][1])


@needs_cpp
def test_cpp_reparam_kl_free_bits_validates_buffers_by_name():
    a = torch.zeros(4, 3).numpy()
    act = torch.zeros(3).numpy()
    with pytest.raises(ValueError, match=r"argument 'active_out' has shape \[4\], expected \[3\]"):
        _C.reparam_kl_forward_free_bits(a, a, a, a.copy(), torch.zeros(4).numpy(), 1.0, 0.5)
    with pytest.raises(ValueError, match=r"argument 'mu' has shape \[12\], expected \[N, nz\]"):
        v = a.reshape(-1)
        _C.reparam_kl_forward_free_bits(v, v, v, v.copy(), act, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"argument 'free_bits' must be finite and >= 0"):
        _C.reparam_kl_forward_free_bits(a, a, a, a.copy(), act, 1.0, -1.0)
    with pytest.raises(ValueError, match=r"argument 'active' has shape \[2\], expected \[3\]"):
        _C.reparam_kl_backward(a, a, a, None, 1.0, 1.0, a.copy(), a.copy(), active=torch.zeros(2).numpy())


# ------------------------------------------------------------------------------------- lsgan, lsgan_d
def _preds(sizes, dtype, device="cpu", seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, h, w in sizes:
        t = torch.randn(n, 1, h, w * (2 if noncontig else 1), generator=g, dtype=torch.float64).to(dtype).to(device)
        out.append((t[..., ::2] if noncontig else t).detach().requires_grad_(True))
    return out


def _scales_id(sizes) -> str:
    return "+".join(f"{n}x{h}x{w}" for n, h, w in sizes)


# 3 scales: 6 segments in lsgan_d, so two Triton launches (at most 4 segments each)
SCALES = [[(1, 1, 1)], [(2, 5, 7), (2, 3, 4)], [(2, 9, 9), (2, 5, 5), (2, 3, 3)]]
LARGE_SCALES = [[(3, 30, 30), (3, 15, 15), (3, 8, 8)], [(1, 257, 129)]]


def _check_lsgan(fused: Fused, sizes, dtype, target):
    preds = _preds(sizes, dtype, fused.device)
    loss = ops.lsgan(preds, target, impl=fused.impl)
    grads = torch.autograd.grad(loss * 1.5, preds)
    ref_in = [p.detach().double().requires_grad_(True) for p in preds]
    loss_r = lsgan_ref(ref_in, target)
    grads_r = torch.autograd.grad(loss_r * 1.5, ref_in)
    rtol, atol = TOL[dtype]
    assert loss.dtype == loss_dtype(dtype) and loss.shape == ()
    torch.testing.assert_close(loss.double(), loss_r, rtol=rtol, atol=atol)
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("sizes", SCALES, ids=_scales_id)
@pytest.mark.parametrize("target", [0.0, 1.0], ids=["target0", "target1"])
@each_impl_and_block_size
def test_lsgan_matches_reference(fused, sizes, dtype, target):
    _check_lsgan(fused, sizes, dtype, target)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("sizes", LARGE_SCALES, ids=_scales_id)
@pytest.mark.parametrize("target", [0.0, 1.0], ids=["target0", "target1"])
@each_impl
def test_lsgan_matches_reference_large(fused, sizes, dtype, target):
    _check_lsgan(fused, sizes, dtype, target)


# lsgan_d against the reference run in the same dtype
LSGAN_D_TOL = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-12, 1e-12)}


def _check_lsgan_d(fused: Fused, sizes, dtype, noncontig):
    fake = _preds(sizes, dtype, fused.device, 1, noncontig)
    real = _preds(sizes, dtype, fused.device, 2, noncontig)
    assert all(p.is_contiguous() != noncontig for p in fake if p.numel() > 1)
    loss = ops.lsgan_d(fake, real, impl=fused.impl)
    loss_r = lsgan_d_ref(fake, real)
    rtol, atol = LSGAN_D_TOL[dtype]
    torch.testing.assert_close(loss, loss_r, rtol=rtol, atol=atol)
    for a, b in zip(torch.autograd.grad(loss, fake + real), torch.autograd.grad(loss_r, fake + real)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@pytest.mark.parametrize("sizes", SCALES, ids=_scales_id)
@pytest.mark.parametrize("noncontig", [False, True], ids=["contiguous", "noncontiguous"])
@each_impl_and_block_size
def test_lsgan_d_matches_reference(fused, sizes, dtype, noncontig):
    _check_lsgan_d(fused, sizes, dtype, noncontig)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=_dtype_id)
@pytest.mark.parametrize("sizes", LARGE_SCALES, ids=_scales_id)
@pytest.mark.parametrize("noncontig", [False, True], ids=["contiguous", "noncontiguous"])
@each_impl
def test_lsgan_d_matches_reference_large(fused, sizes, dtype, noncontig):
    _check_lsgan_d(fused, sizes, dtype, noncontig)


@each_impl
def test_lsgan_gradcheck_float64(fused):
    preds = _preds([(1, 3, 3), (1, 2, 1)], torch.float64, fused.device)
    assert torch.autograd.gradcheck(lambda a, b: ops.lsgan([a, b], 1.0, impl=fused.impl), tuple(preds))
    assert torch.autograd.gradcheck(lambda a, b: ops.lsgan_d([a], [b], impl=fused.impl), tuple(preds))


def _launch_spy(kernel):
    """A copy of a @triton.jit kernel (same class, so the dispatcher still recognises it) that records the
    arguments of each launch in ``.launches``, then launches the real kernel."""
    def getitem(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))
            return kernel[grid](*args, **kwargs)
        return launch
    spy = copy.copy(kernel)
    spy.__class__ = type("LaunchSpy", (type(kernel),), {"__getitem__": getitem})
    spy.launches = []
    return spy


def _spy_kernels(monkeypatch, module) -> list:
    spies = []
    for name in [n for n in vars(module) if n.endswith("_kernel")]:
        spy = _launch_spy(getattr(module, name))
        monkeypatch.setattr(module, name, spy)
        spies.append(spy)
    return spies


def _python_floats(spies: list) -> list[object]:
    return [a for spy in spies for args, kw in spy.launches for a in (*args, *kw.values()) if isinstance(a, float)]


@needs_triton
@pytest.mark.parametrize("free_bits", [0.0, 0.05], ids=["plain", "free_bits"])
def test_triton_reparam_kl_launches_take_no_python_float(monkeypatch, free_bits):
    """Compiled Triton types a Python float argument as fp32 (the interpreter keeps it exact): the weights
    are applied on the torch side, so no float reaches a launch and float64 stays float64 on a GPU."""
    spies = _spy_kernels(monkeypatch, reparam_mod)
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((4, 3), torch.float64, TRITON_DEVICE))
    w = 0.01  # not exact in float32: rounding it would move the KL by ~1e-10 relative
    z, kl = ops.reparam_kl(mu, lv, eps, w, free_bits, impl="triton")
    torch.autograd.grad((z, kl), (mu, lv, eps), (torch.ones_like(z), torch.tensor(0.7, dtype=torch.float64,
                                                                                    device=TRITON_DEVICE)))
    assert sum(len(s.launches) for s in spies) == 2
    assert _python_floats(spies) == []
    zr, klr = reparam_kl_ref(mu.detach(), lv.detach(), eps, w, free_bits)
    torch.testing.assert_close(kl.detach(), klr, rtol=1e-12, atol=1e-12)


@needs_triton
def test_triton_lsgan_launches_take_no_python_float_and_refuse_an_inexact_target(monkeypatch):
    spies = _spy_kernels(monkeypatch, lsgan_mod)
    fake = _preds([(2, 5, 5), (2, 3, 3)], torch.float64, TRITON_DEVICE, 1)
    real = _preds([(2, 5, 5), (2, 3, 3)], torch.float64, TRITON_DEVICE, 2)
    loss = ops.lsgan_d(fake, real, impl="triton") + ops.lsgan(fake, 1.0, impl="triton")
    torch.autograd.grad(loss, fake + real)
    assert sum(len(s.launches) for s in spies) == 4
    assert _python_floats(spies) == []
    with pytest.raises(OpUnavailableError, match="target 0.9 is not exact in float32"):
        ops.lsgan(fake, 0.9, impl="triton")


def test_fused_losses_are_float32_for_bfloat16_inputs():
    """The guard and the log read the losses: fp32 for bf16 inputs (as autocast computes the reference's
    sums and MSE), float64 for float64."""
    assert loss_dtype(torch.bfloat16) == torch.float32 and loss_dtype(torch.float16) == torch.float32
    assert loss_dtype(torch.float32) == torch.float32 and loss_dtype(torch.float64) == torch.float64


@each_impl
def test_lsgan_gradients_survive_retain_graph(fused):
    """C++ forms the gradient in the forward, Triton in the backward: a second backward (retain_graph) must match."""
    preds = _preds([(2, 5, 5), (2, 3, 3)], torch.float64, fused.device)
    loss = ops.lsgan_d(preds[:1], preds[1:], impl=fused.impl)
    first = torch.autograd.grad(loss * 2.0, preds, retain_graph=True)
    second = torch.autograd.grad(loss, preds, retain_graph=True)
    third = torch.autograd.grad(loss, preds)
    ref = torch.autograd.grad(lsgan_d_ref(preds[:1], preds[1:]), preds)
    for a, b, c, r in zip(first, second, third, ref):
        torch.testing.assert_close(a, 2 * r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b, r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, r, rtol=1e-12, atol=1e-12)


@needs_cpp
def test_cpp_lsgan_forward_without_grad_writes_no_gradient():
    preds = [torch.randn(2, 1, 4, 4)]  # no requires_grad: the forward skips the gradient pass
    torch.testing.assert_close(ops.lsgan(preds, 1.0, impl="cpp"), lsgan_ref(preds, 1.0))
    a = torch.randn(4, 4).numpy()
    with pytest.raises(ValueError, match=r"lsgan_forward: argument 'grads_out\[0\]' has shape"):
        _C.lsgan_forward([a], [1.0], 1, [a[:2].copy()])


# ------------------------------------------------------------------------ prepare_batch (C++ only)
def _images(n=3, h=11, w=9, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8)


@needs_cpp
@pytest.mark.parametrize("c", [1, 3, 4], ids=lambda c: f"{c}channels")
def test_cpp_prepare_batch_matches_reference_exactly(c):
    images = _images(4, 13, 10, c)
    top, left = torch.tensor([0, 5, 2, 6]), torch.tensor([0, 3, 1, 3])
    flip = torch.tensor([False, True, True, False])
    out = ops.prepare_batch(images, top, left, flip, 7, impl="cpp")
    ref = prepare_batch_ref(images, top, left, flip, 7)
    assert out.dtype == torch.float32 and out.shape == (4, c, 7, 7)
    assert torch.equal(out, ref)


@needs_cpp
def test_cpp_prepare_batch_noncontiguous_and_converted_indices():
    images = _images(2, 12, 12, 3).permute(0, 2, 1, 3)  # [N, W, H, C] viewed as [N, H, W, C]: not contiguous
    assert not images.is_contiguous()
    top, left, flip = torch.tensor([1, 2], dtype=torch.int32), [0, 4], torch.tensor([1, 0], dtype=torch.uint8)
    out = ops.prepare_batch(images, top, torch.tensor(left), flip, 8, impl="cpp")
    assert torch.equal(out, prepare_batch_ref(images, top, torch.tensor(left), flip.bool(), 8))


@needs_cpp
def test_cpp_prepare_batch_rejects_bad_arguments():
    images = _images(2, 8, 8, 3)
    z, f = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'top' \[1\] = 3 .*height 8"):
        ops.prepare_batch(images, torch.tensor([0, 3]), z, f, 6, impl="cpp")
    with pytest.raises(ValueError, match=r"'left' \[0\] = -1"):
        ops.prepare_batch(images, z, torch.tensor([-1, 0]), f, 6, impl="cpp")
    with pytest.raises(TypeError, match="images has dtype torch.float32"):
        ops.prepare_batch(images.float(), z, z, f, 6, impl="cpp")
    with pytest.raises(ValueError, match=r"'flip' must be \[N\]"):
        ops.prepare_batch(images, z, z, torch.zeros(3, dtype=torch.bool), 6, impl="cpp")
    with pytest.raises(ValueError, match="'size' must be >= 1"):
        ops.prepare_batch(images, z, z, f, 0, impl="cpp")


# --------------------------------------------------------------------- C++ extension argument checks
@needs_cpp
def test_cpp_extension_validates_buffers_by_name():
    a = torch.zeros(4, 3).numpy()
    with pytest.raises(TypeError, match=r"reparam_kl_forward: argument 'mu' has dtype int64"):
        _C.reparam_kl_forward(torch.zeros(4, 3, dtype=torch.long).numpy(), a, a, a.copy(), 1.0)
    with pytest.raises(TypeError, match=r"argument 'logvar' has dtype float64, expected float32"):
        _C.reparam_kl_forward(a, a.astype("float64"), a, a.copy(), 1.0)
    with pytest.raises(ValueError, match=r"argument 'eps' has shape \[3, 4\], expected the shape of 'mu' \[4, 3\]"):
        _C.reparam_kl_forward(a, a, torch.zeros(3, 4).numpy(), a.copy(), 1.0)
    with pytest.raises(ValueError, match=r"argument 'z_out' must be C-contiguous"):
        _C.reparam_kl_forward(a, a, a, torch.zeros(3, 4).numpy().T, 1.0)
    with pytest.raises(ValueError, match=r"argument 'num_threads' must be >= 1"):
        _C.reparam_kl_forward(a, a, a, a.copy(), 1.0, 0)
    ro = a.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"argument 'dlogvar_out' must be writable"):
        _C.reparam_kl_backward(a, a, a, None, 1.0, 1.0, a.copy(), ro)
    with pytest.raises(ValueError, match=r"lsgan_forward: argument 'preds\[1\]' is empty"):
        _C.lsgan_forward([a, a[:0]], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"argument 'targets' has 1 entries"):
        _C.lsgan_forward([a, a], [1.0])
    with pytest.raises(ValueError, match=r"argument 'grads_out\[0\]' has shape"):
        _C.lsgan_backward([a], [1.0], 1.0, [a[:2].copy()])


# ------------------------------------------------------------------------ Triton in CUDA graphs (GPU)
def _capture(fn):
    """Warm up on a side stream (compiles the kernels), then capture ``fn`` in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with capturing(graph):
        out = fn()
    return graph, out


@pytest.mark.gpu
@needs_triton
@needs_cuda  # the lowest skipif is evaluated first: without CUDA this is the reason given
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_dtype_id)
def test_triton_reparam_kl_in_cuda_graph(dtype):
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
@needs_triton
@needs_cuda  # the lowest skipif is evaluated first: without CUDA this is the reason given
@pytest.mark.parametrize("n_scales", [1, 2, 3], ids=lambda n: f"{n}scales")
def test_triton_lsgan_and_lsgan_d_in_cuda_graph(n_scales):
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


@pytest.mark.gpu
@needs_triton
@needs_cuda  # the lowest skipif is evaluated first: without CUDA this is the reason given
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("shape", [(2, 8), (64, 8), (4099, 3), (300, 130)], ids=_shape_id)
def test_triton_reparam_kl_free_bits_on_cuda(shape, dtype):
    """Free bits in the Triton kernels on a CUDA device against the float64 reference (forward, backward)."""
    _check_free_bits("triton", "cuda", shape, dtype)


@pytest.mark.gpu
@needs_triton
@needs_cuda  # the lowest skipif is evaluated first: without CUDA this is the reason given
def test_triton_reparam_kl_free_bits_in_cuda_graph():
    shape, w = (8, 8), 0.01
    mu0, lv0, _ = _fb_inputs(shape, torch.float32, "cuda")
    mu, lv = mu0.clone().requires_grad_(True), lv0.clone().requires_grad_(True)
    eps, gz = torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda")
    gkl = torch.tensor(0.5, device="cuda")

    def step():
        z, kl = ops.reparam_kl(mu, lv, eps, w, FREE_BITS, impl="triton")
        return (z, kl, *torch.autograd.grad((z, kl), (mu, lv), (gz, gkl)))

    graph, out = _capture(step)
    for seed in range(3):  # new inputs (a different set of dimensions under the floor) on every replay
        new_mu, new_lv, _ = _fb_inputs(shape, torch.float32, "cuda", seed=seed)
        with torch.no_grad():
            mu.copy_(new_mu.flip(1) if seed % 2 else new_mu)
            lv.copy_(new_lv)
        eps.normal_()
        graph.replay()
        ref_in = [t.detach().double().requires_grad_(True) for t in (mu, lv)]
        zr, klr = reparam_kl_ref(*ref_in, eps.double(), w, FREE_BITS)
        ref = (zr, klr, *torch.autograd.grad((zr, klr), ref_in, (gz.double(), gkl.double())))
        for a, b in zip(out, ref):
            torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=1e-5)
