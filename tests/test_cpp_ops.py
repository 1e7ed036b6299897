"""The C++ extension (bicycle._C) against the references: forward, every gradient, validation messages."""
from __future__ import annotations

import pytest
import torch

from conftest_ops import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()

from bicycle import ops  # noqa: E402
from bicycle.kernels.lsgan import lsgan_d_ref, lsgan_ref  # noqa: E402
from bicycle.kernels.prepare_batch import prepare_batch_ref  # noqa: E402
from bicycle.kernels.reparam_kl import reparam_kl_ref  # noqa: E402

_C = pytest.importorskip("bicycle._C", reason="the C++ extension did not build")

# dtype -> (rtol, atol) against the reference evaluated in float64 on the same inputs
TOL = {torch.float32: (2e-5, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (2e-2, 2e-2)}
SHAPES = [(1, 1), (1, 8), (2, 1), (7, 13), (33, 8), (4099, 3)]


def _inputs(shape, dtype, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    full = (shape[0], shape[1] * 2) if noncontig else shape
    ts = [torch.randn(full, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]
    if noncontig:
        ts = [t[:, ::2] for t in ts]
        assert not ts[0].is_contiguous()
    return ts


def _reparam_case(shape, dtype, impl, noncontig=False, w=0.01):
    mu, lv, eps = _inputs(shape, dtype, noncontig=noncontig)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    eps.requires_grad_(True)
    gz = torch.randn(shape, dtype=torch.float64).to(dtype)
    gkl = torch.tensor(0.7, dtype=dtype)
    z, kl = ops.reparam_kl(mu, lv, eps, w, impl=impl)
    grads = torch.autograd.grad((z, kl), (mu, lv, eps), (gz, gkl))
    ref_in = [t.detach().double().requires_grad_(True) for t in (mu, lv, eps)]
    zr, klr = reparam_kl_ref(*ref_in, w)
    grads_r = torch.autograd.grad((zr, klr), ref_in, (gz.double(), gkl.double()))
    rtol, atol = TOL[dtype]
    assert z.dtype == dtype and kl.dtype == dtype and z.shape == mu.shape and kl.shape == ()
    torch.testing.assert_close(z.double(), zr, rtol=rtol, atol=atol)
    torch.testing.assert_close(kl.double(), klr, rtol=rtol, atol=atol)
    for a, b in zip(grads, grads_r):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_reparam_kl_matches_reference(shape, dtype):
    _reparam_case(shape, dtype, "cpp")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparam_kl_noncontiguous(dtype):
    _reparam_case((9, 5), dtype, "cpp", noncontig=True)


def test_reparam_kl_grad_of_z_only_and_kl_only():
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((6, 4), torch.float64))
    for pick in (0, 1):
        out = ops.reparam_kl(mu, lv, eps, 0.5, impl="cpp")[pick].sum()
        ref = reparam_kl_ref(mu, lv, eps, 0.5)[pick].sum()
        got = torch.autograd.grad(out, (mu, lv, eps), allow_unused=True, materialize_grads=True)
        for a, b in zip(got, torch.autograd.grad(ref, (mu, lv, eps), allow_unused=True, materialize_grads=True)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_reparam_kl_gradcheck_float64():
    mu, lv, eps = (t.requires_grad_(True) for t in _inputs((3, 2), torch.float64))
    fn = lambda a, b, c: ops.reparam_kl(a, b, c, 0.3, impl="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu, lv, eps))


def test_reparam_kl_large_and_extreme_values():
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


def test_reparam_kl_same_result_for_any_thread_count():
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


def _preds(sizes, dtype, seed=0, noncontig=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, h, w in sizes:
        t = torch.randn(n, 1, h, w * (2 if noncontig else 1), generator=g, dtype=torch.float64).to(dtype)
        out.append((t[..., ::2] if noncontig else t).detach().requires_grad_(True))
    return out


SCALES = [[(1, 1, 1)], [(2, 5, 7), (2, 3, 4)], [(3, 30, 30), (3, 15, 15), (3, 8, 8)], [(1, 257, 129)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("sizes", SCALES, ids=lambda s: f"{len(s)}scales")
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_lsgan_matches_reference(sizes, dtype, target):
    preds = _preds(sizes, dtype)
    loss = ops.lsgan(preds, target, impl="cpp")
    grads = torch.autograd.grad(loss * 1.5, preds)
    ref_in = [p.detach().double().requires_grad_(True) for p in preds]
    loss_r = lsgan_ref(ref_in, target)
    grads_r = torch.autograd.grad(loss_r * 1.5, ref_in)
    rtol, atol = TOL[dtype]
    assert loss.dtype == dtype and loss.shape == ()
    torch.testing.assert_close(loss.double(), loss_r, rtol=rtol, atol=atol)
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("sizes", SCALES[1:3], ids=lambda s: f"{len(s)}scales")
@pytest.mark.parametrize("noncontig", [False, True])
def test_lsgan_d_matches_reference(sizes, noncontig):
    fake, real = _preds(sizes, torch.float64, 1, noncontig), _preds(sizes, torch.float64, 2, noncontig)
    assert all(not p.is_contiguous() for p in fake) == noncontig
    loss = ops.lsgan_d(fake, real, impl="cpp")
    loss_r = lsgan_d_ref(fake, real)
    torch.testing.assert_close(loss, loss_r, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(loss, fake + real), torch.autograd.grad(loss_r, fake + real)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lsgan_gradcheck_float64():
    preds = _preds([(1, 3, 3), (1, 2, 1)], torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ops.lsgan([a, b], 1.0, impl="cpp"), tuple(preds))
    assert torch.autograd.gradcheck(lambda a, b: ops.lsgan_d([a], [b], impl="cpp"), tuple(preds))


def _images(n=3, h=11, w=9, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("c", [1, 3, 4])
def test_prepare_batch_matches_reference_exactly(c):
    images = _images(4, 13, 10, c)
    top, left = torch.tensor([0, 5, 2, 6]), torch.tensor([0, 3, 1, 3])
    flip = torch.tensor([False, True, True, False])
    out = ops.prepare_batch(images, top, left, flip, 7, impl="cpp")
    ref = prepare_batch_ref(images, top, left, flip, 7)
    assert out.dtype == torch.float32 and out.shape == (4, c, 7, 7)
    assert torch.equal(out, ref)


def test_prepare_batch_noncontiguous_and_converted_indices():
    images = _images(2, 12, 12, 3).permute(0, 2, 1, 3)  # [N, W, H, C] viewed as [N, H, W, C]: not contiguous
    assert not images.is_contiguous()
    top, left, flip = torch.tensor([1, 2], dtype=torch.int32), [0, 4], torch.tensor([1, 0], dtype=torch.uint8)
    out = ops.prepare_batch(images, top, torch.tensor(left), flip, 8, impl="cpp")
    assert torch.equal(out, prepare_batch_ref(images, top, torch.tensor(left), flip.bool(), 8))


def test_prepare_batch_rejects_bad_arguments():
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


def test_extension_validates_buffers_by_name():
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


def test_lsgan_gradients_formed_in_forward_survive_retain_graph():
    """The C++ forward also writes the gradient; a second backward (retain_graph) must still be right."""
    preds = _preds([(2, 5, 5), (2, 3, 3)], torch.float64)
    loss = ops.lsgan_d(preds[:1], preds[1:], impl="cpp")
    first = torch.autograd.grad(loss * 2.0, preds, retain_graph=True)
    second = torch.autograd.grad(loss, preds, retain_graph=True)
    third = torch.autograd.grad(loss, preds)
    ref = torch.autograd.grad(lsgan_d_ref(preds[:1], preds[1:]), preds)
    for a, b, c, r in zip(first, second, third, ref):
        torch.testing.assert_close(a, 2 * r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b, r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(c, r, rtol=1e-12, atol=1e-12)


def test_lsgan_forward_without_grad_writes_no_gradient():
    preds = [torch.randn(2, 1, 4, 4)]  # no requires_grad: the forward skips the gradient pass
    torch.testing.assert_close(ops.lsgan(preds, 1.0, impl="cpp"), lsgan_ref(preds, 1.0))
    a = torch.randn(4, 4).numpy()
    with pytest.raises(ValueError, match=r"lsgan_forward: argument 'grads_out\[0\]' has shape"):
        _C.lsgan_forward([a], [1.0], 1, [a[:2].copy()])
