"""Least-squares GAN loss over the outputs of a multi-scale PatchGAN.

loss = SUM over scales s of MEAN((pred_s - target)^2);   dloss/dpred_s = 2 (pred_s - target) / numel_s

The fused op sees a list of segments (pred, target): the scales of one call, or for the discriminator
the fake scales (target 0) and the real scales (target 1) together, so lsgan_d is one launch forward and
one backward for up to 4 segments (2 scales). Four parts as in reparam_kl.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from bicycle.errors import OpUnavailableError

from ._common import HAS_TRITON, block_size, compute_dtype, cpp_float_dtype, cpu_buffer, loss_dtype, tl, triton


def lsgan_ref(preds: Sequence[Tensor], target: float) -> Tensor:
    """Reference, written like the original code: one MSELoss per scale, summed. preds: [N, 1, h_s, w_s]."""
    loss = preds[0].new_zeros(())
    for pred in preds:
        loss = loss + torch.nn.functional.mse_loss(pred, torch.full_like(pred, target))
    return loss


def lsgan_d_ref(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor]) -> Tensor:
    """Discriminator loss, fake + real (no 0.5): lsgan(fake, 0) + lsgan(real, 1)."""
    return lsgan_ref(preds_fake, 0.0) + lsgan_ref(preds_real, 1.0)


def check_preds(preds: Sequence[Tensor], arg: str = "preds") -> None:
    """Non-empty list of non-empty floating tensors on one device; errors name the argument."""
    if len(preds) == 0:
        raise ValueError(f"lsgan: {arg} is an empty list; pass one tensor per discriminator scale")
    for i, p in enumerate(preds):
        if not isinstance(p, Tensor) or not p.dtype.is_floating_point:
            raise TypeError(f"lsgan: {arg}[{i}] must be a floating-point tensor")
        if p.numel() == 0:
            raise ValueError(f"lsgan: {arg}[{i}] is empty")
        if p.device != preds[0].device:
            raise ValueError(f"lsgan: {arg}[{i}] is on {p.device}, {arg}[0] on {preds[0].device}")


class Backend(Protocol):
    def forward(self, preds: Sequence[Tensor], targets: Sequence[float], with_grads: bool = False
                ) -> tuple[Tensor, list[Tensor] | None]:
        """(loss, grads for a unit loss gradient, or None). A backend may ignore ``with_grads``."""

    def backward(self, preds: Sequence[Tensor], targets: Sequence[float], grad: Tensor) -> list[Tensor]: ...


# ---------------------------------------------------------------------------------------------- Triton
MAX_SEGMENTS = 4  # segments per launch; more are split over several launches into one partials buffer

if HAS_TRITON:

    @triton.jit
    def _sq_sum(ptr, n, target, blk, BLOCK: tl.constexpr, FP64: tl.constexpr):
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(ptr + offs, mask=mask, other=0.0)
        if FP64:
            x = x.to(tl.float64)
        else:
            x = x.to(tl.float32)
        d = tl.where(mask, x - target, 0.0)
        return tl.sum(d * d, axis=0) / n

    @triton.jit
    def _fwd_kernel(
        part_ptr, p0, p1, p2, p3, n0, n1, n2, n3, t0, t1, t2, t3, s1, s2, s3,
        BLOCK: tl.constexpr, FP64: tl.constexpr,
    ):
        # Program pid works on block (pid - s_k) of segment k, where s_k <= pid < s_{k+1} (s_0 = 0).
        pid = tl.program_id(0)
        if pid < s1:
            acc = _sq_sum(p0, n0, t0, pid, BLOCK, FP64)
        elif pid < s2:
            acc = _sq_sum(p1, n1, t1, pid - s1, BLOCK, FP64)
        elif pid < s3:
            acc = _sq_sum(p2, n2, t2, pid - s2, BLOCK, FP64)
        else:
            acc = _sq_sum(p3, n3, t3, pid - s3, BLOCK, FP64)
        tl.store(part_ptr + pid, acc)

    @triton.jit
    def _grad(ptr, out_ptr, n, target, g, blk, BLOCK: tl.constexpr):
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(ptr + offs, mask=mask, other=0.0).to(g.dtype)
        tl.store(out_ptr + offs, ((x - target) * (2.0 * g / n)).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_kernel(
        g_ptr, p0, p1, p2, p3, q0, q1, q2, q3, n0, n1, n2, n3, t0, t1, t2, t3, s1, s2, s3,
        BLOCK: tl.constexpr, FP64: tl.constexpr,
    ):
        pid = tl.program_id(0)
        g = tl.load(g_ptr)  # the loss gradient, read on the device: no host sync
        if FP64:
            g = g.to(tl.float64)
        else:
            g = g.to(tl.float32)
        if pid < s1:
            _grad(p0, q0, n0, t0, g, pid, BLOCK)
        elif pid < s2:
            _grad(p1, q1, n1, t1, g, pid - s1, BLOCK)
        elif pid < s3:
            _grad(p2, q2, n2, t2, g, pid - s2, BLOCK)
        else:
            _grad(p3, q3, n3, t3, g, pid - s3, BLOCK)


def kernel_target(target: float) -> int | float:
    """A target as the kernels receive it. Compiled Triton types a Python float argument as fp32, so a
    target must be exact in float32 (0 and 1, the GAN labels, are); an integral one is passed as an int."""
    t = float(target)
    if t != float(torch.tensor(t, dtype=torch.float32)):
        raise OpUnavailableError(f"lsgan (triton): target {t!r} is not exact in float32, which the kernels "
                                 f"receive it as; use impl='ref' or 'cpp' for this target")
    return int(t) if t.is_integer() else t


def _groups(preds: Sequence[Tensor], targets: Sequence[float], block: int):
    """Per launch: (pointers, numels, targets, block starts s1..s3, total blocks), padded to MAX_SEGMENTS."""
    for lo in range(0, len(preds), MAX_SEGMENTS):
        ps, ts = list(preds[lo : lo + MAX_SEGMENTS]), [kernel_target(t) for t in targets[lo : lo + MAX_SEGMENTS]]
        ns = [p.numel() for p in ps]
        starts = [0]
        for n in ns:
            starts.append(starts[-1] + triton.cdiv(n, block))
        total = starts[-1]
        pad = MAX_SEGMENTS - len(ps)
        # Unused slots start at `total`, so no program reaches them.
        yield ps + [ps[0]] * pad, ns + [ns[0]] * pad, ts + [0] * pad, (starts[1:] + [total] * pad)[: MAX_SEGMENTS - 1], total


class TritonBackend:
    """Triton launchers: capture-safe (no host sync, no host->device copies, no branch on tensor values)."""

    name = "triton"
    GPU_BLOCK = 2048

    def _block(self, preds: Sequence[Tensor]) -> int:
        return block_size(max(p.numel() for p in preds), preds[0].device, self.GPU_BLOCK)

    def forward(self, preds: Sequence[Tensor], targets: Sequence[float], with_grads: bool = False
                ) -> tuple[Tensor, None]:
        # The gradient is not formed here: scaling it by the loss gradient later would need a host
        # read of that scalar (not capture-safe) or another pass; the backward kernel reads p once instead.
        dtype = compute_dtype(*preds)
        preds = [p.to(dtype).contiguous() for p in preds]
        block, fp64 = self._block(preds), dtype == torch.float64
        groups = list(_groups(preds, targets, block))
        partial = torch.empty(sum(g[-1] for g in groups), dtype=torch.float64 if fp64 else torch.float32,
                              device=preds[0].device)
        off = 0
        for ps, ns, ts, ss, total in groups:
            _fwd_kernel[(total,)](partial[off:], *ps, *ns, *ts, *ss, BLOCK=block, FP64=fp64)
            off += total
        return partial.sum().to(loss_dtype(dtype)), None  # fixed-order sum of partials: deterministic, unlike atomics

    def backward(self, preds: Sequence[Tensor], targets: Sequence[float], grad: Tensor) -> list[Tensor]:
        dtype = compute_dtype(*preds)
        preds = [p.to(dtype).contiguous() for p in preds]
        grads = [torch.empty_like(p) for p in preds]
        block = self._block(preds)
        for k, (ps, ns, ts, ss, total) in enumerate(_groups(preds, targets, block)):
            qs = grads[k * MAX_SEGMENTS : (k + 1) * MAX_SEGMENTS]
            qs = qs + [qs[0]] * (MAX_SEGMENTS - len(qs))
            _bwd_kernel[(total,)](grad, *ps, *qs, *ns, *ts, *ss, BLOCK=block, FP64=dtype == torch.float64)
        return grads


# ------------------------------------------------------------------------------------------------ C++
class CppBackend:
    """Launchers for ``bicycle._C`` (CPU, float32/float64 buffers; other float dtypes computed in float32)."""

    name = "cpp"

    def __init__(self, ext: Any) -> None:
        self.ext = ext

    def forward(self, preds: Sequence[Tensor], targets: Sequence[float], with_grads: bool = False
                ) -> tuple[Tensor, list[Tensor] | None]:
        """The loss and, with ``with_grads``, dloss/dpreds formed in the same pass (forward and backward fused)."""
        out_dtype = compute_dtype(*preds)
        dtype = cpp_float_dtype(out_dtype)
        bufs = [cpu_buffer(p, dtype) for p in preds]
        grads = [torch.empty_like(b) for b in bufs] if with_grads else None
        loss = self.ext.lsgan_forward([b.numpy() for b in bufs], [float(t) for t in targets], torch.get_num_threads(),
                                      None if grads is None else [g.numpy() for g in grads])
        return torch.tensor(loss, dtype=loss_dtype(out_dtype)), None if grads is None else [g.to(out_dtype) for g in grads]

    def backward(self, preds: Sequence[Tensor], targets: Sequence[float], grad: Tensor) -> list[Tensor]:
        out_dtype = compute_dtype(*preds)
        dtype = cpp_float_dtype(out_dtype)
        bufs = [cpu_buffer(p, dtype) for p in preds]
        grads = [torch.empty_like(b) for b in bufs]
        self.ext.lsgan_backward([b.numpy() for b in bufs], [float(t) for t in targets], float(grad),
                                [g.numpy() for g in grads], torch.get_num_threads())
        return [g.to(out_dtype) for g in grads]


# ------------------------------------------------------------------------------------------- autograd
class LSGANFunction(torch.autograd.Function):
    """(*preds) -> SUM_i MEAN((preds[i] - targets[i])^2) through ``backend``; one launch each way."""

    @staticmethod
    def forward(ctx: Any, targets: tuple[float, ...], backend: Backend, *preds: Tensor) -> Tensor:
        ctx.save_for_backward(*preds)
        ctx.targets, ctx.backend = targets, backend
        loss, ctx.unit_grads = backend.forward(preds, targets, any(ctx.needs_input_grad[2:]))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):
        preds = ctx.saved_tensors
        if ctx.unit_grads is not None and grad.device.type == "cpu":
            # Gradients formed in the forward (C++ path, CPU: reading the scalar costs no sync). They are
            # handed over once; a second backward (retain_graph) recomputes them.
            unit, ctx.unit_grads = ctx.unit_grads, None
            g = float(grad)
            grads = unit if g == 1.0 else [u.mul_(g) for u in unit]
        else:
            grads = ctx.backend.backward(preds, ctx.targets, grad)
        needs = ctx.needs_input_grad[2:]
        return (None, None, *(g if need else None for g, need in zip(grads, needs)))


def lsgan_fused(preds: Sequence[Tensor], target: float, backend: Backend) -> Tensor:
    """SUM over scales of MEAN((pred - target)^2) through ``backend``. preds: list of [N, 1, h_s, w_s]."""
    check_preds(preds)
    return LSGANFunction.apply(tuple(float(target) for _ in preds), backend, *preds)


def lsgan_d_fused(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor], backend: Backend) -> Tensor:
    """lsgan(fake, 0) + lsgan(real, 1) as one fused op (one launch each way for up to 2 + 2 scales)."""
    check_preds(preds_fake, "preds_fake")
    check_preds(preds_real, "preds_real")
    if preds_real[0].device != preds_fake[0].device:
        raise ValueError(f"lsgan_d: preds_real on {preds_real[0].device}, preds_fake on {preds_fake[0].device}")
    targets = (0.0,) * len(preds_fake) + (1.0,) * len(preds_real)
    return LSGANFunction.apply(targets, backend, *preds_fake, *preds_real)
