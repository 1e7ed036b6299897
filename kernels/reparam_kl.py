"""Reparameterization + KL divergence.

z  = mu + eps * exp(logvar / 2)                                   [N, nz]
kl = -0.5 * kl_weight * SUM(1 + logvar - mu^2 - exp(logvar))      0-dim (a sum, not a mean)

Backward, with s = exp(logvar / 2), gz = dL/dz and gkl = dL/dkl:
dmu     = gz + gkl * w * mu
dlogvar = gz * eps * s / 2 + gkl * w * (s^2 - 1) / 2
deps    = gz * s

Four parts: the reference, the Triton kernels + launchers, the C++ launcher (the extension module is
handed in by ``bicycle.ops``) and the autograd.Function wiring either backend.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import HAS_TRITON, block_size, compute_dtype, cpp_float_dtype, cpu_buffer, tl, triton


def reparam_kl_ref(mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference, written like the original BicycleGAN code. mu, logvar, eps: [N, nz]."""
    std = logvar.mul(0.5).exp()
    z = eps.mul(std).add(mu)
    kl_element = mu.pow(2).add(logvar.exp()).mul(-1).add(1).add(logvar)
    kl = torch.sum(kl_element).mul(-0.5) * kl_weight
    return z, kl


def check_inputs(mu: Tensor, logvar: Tensor, eps: Tensor) -> None:
    """Same shape and device for mu, logvar, eps; errors name the argument."""
    for name, t in (("logvar", logvar), ("eps", eps)):
        if t.shape != mu.shape:
            raise ValueError(f"reparam_kl: {name} has shape {list(t.shape)}, expected mu's {list(mu.shape)}")
        if t.device != mu.device:
            raise ValueError(f"reparam_kl: {name} is on {t.device}, mu on {mu.device}")
    if not mu.dtype.is_floating_point:
        raise TypeError(f"reparam_kl: mu has dtype {mu.dtype}, expected a floating dtype")


class Backend(Protocol):
    def forward(self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float) -> tuple[Tensor, Tensor]: ...

    def backward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, gz: Tensor | None, gkl: Tensor | None,
        need_deps: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]: ...


# ---------------------------------------------------------------------------------------------- Triton
if HAS_TRITON:

    @triton.jit
    def _fwd_kernel(mu_ptr, lv_ptr, eps_ptr, z_ptr, part_ptr, n, neg_half_w, BLOCK: tl.constexpr, FP64: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0)
        lv = tl.load(lv_ptr + offs, mask=mask, other=0.0)
        eps = tl.load(eps_ptr + offs, mask=mask, other=0.0)
        if FP64:
            mu = mu.to(tl.float64)
            lv = lv.to(tl.float64)
            eps = eps.to(tl.float64)
        else:
            mu = mu.to(tl.float32)
            lv = lv.to(tl.float32)
            eps = eps.to(tl.float32)
        s = tl.exp(0.5 * lv)
        tl.store(z_ptr + offs, (mu + eps * s).to(z_ptr.dtype.element_ty), mask=mask)
        term = tl.where(mask, 1.0 + lv - mu * mu - s * s, 0.0)  # exp(logvar) = s * s
        tl.store(part_ptr + pid, tl.sum(term, axis=0) * neg_half_w)

    @triton.jit
    def _bwd_kernel(
        mu_ptr, lv_ptr, eps_ptr, gz_ptr, gkl_ptr, dmu_ptr, dlv_ptr, deps_ptr, n, w,
        BLOCK: tl.constexpr, HAS_GZ: tl.constexpr, HAS_GKL: tl.constexpr, HAS_DEPS: tl.constexpr, FP64: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        mu = tl.load(mu_ptr + offs, mask=mask, other=0.0)
        lv = tl.load(lv_ptr + offs, mask=mask, other=0.0)
        eps = tl.load(eps_ptr + offs, mask=mask, other=0.0)
        if FP64:
            mu = mu.to(tl.float64)
            lv = lv.to(tl.float64)
            eps = eps.to(tl.float64)
        else:
            mu = mu.to(tl.float32)
            lv = lv.to(tl.float32)
            eps = eps.to(tl.float32)
        if HAS_GZ:
            g = tl.load(gz_ptr + offs, mask=mask, other=0.0).to(mu.dtype)
        else:
            g = tl.zeros_like(mu)
        if HAS_GKL:
            a = tl.load(gkl_ptr).to(mu.dtype) * w  # read on the device: no host sync
        else:
            a = 0.0
        s = tl.exp(0.5 * lv)
        tl.store(dmu_ptr + offs, (g + a * mu).to(dmu_ptr.dtype.element_ty), mask=mask)
        dlv = 0.5 * g * eps * s + 0.5 * a * (s * s - 1.0)
        tl.store(dlv_ptr + offs, dlv.to(dlv_ptr.dtype.element_ty), mask=mask)
        if HAS_DEPS:
            tl.store(deps_ptr + offs, (g * s).to(deps_ptr.dtype.element_ty), mask=mask)


class TritonBackend:
    """Triton launchers: capture-safe (no host sync, no host->device copies, no branch on tensor values)."""

    name = "triton"
    GPU_BLOCK = 1024

    def forward(self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float) -> tuple[Tensor, Tensor]:
        dtype = compute_dtype(mu, logvar, eps)
        mu, logvar, eps = (t.to(dtype).contiguous() for t in (mu, logvar, eps))
        n = mu.numel()
        block = block_size(n, mu.device, self.GPU_BLOCK)
        grid = triton.cdiv(max(n, 1), block)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        z = torch.empty_like(mu)
        partial = torch.empty(grid, dtype=acc, device=mu.device)
        _fwd_kernel[(grid,)](mu, logvar, eps, z, partial, n, -0.5 * float(kl_weight), BLOCK=block,
                             FP64=dtype == torch.float64)
        # Partials are summed in a fixed order: deterministic, unlike atomics.
        return z, partial.sum().to(dtype)

    def backward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, gz: Tensor | None, gkl: Tensor | None,
        need_deps: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        n = mu.numel()
        block = block_size(n, mu.device, self.GPU_BLOCK)
        dmu, dlv = torch.empty_like(mu), torch.empty_like(mu)
        deps = torch.empty_like(mu) if need_deps and gz is not None else None
        gz_c = gz.contiguous() if gz is not None else mu
        _bwd_kernel[(triton.cdiv(max(n, 1), block),)](
            mu, logvar, eps, gz_c, gkl if gkl is not None else mu, dmu, dlv, deps if deps is not None else mu, n,
            float(kl_weight), BLOCK=block, HAS_GZ=gz is not None, HAS_GKL=gkl is not None,
            HAS_DEPS=deps is not None, FP64=mu.dtype == torch.float64,
        )
        if need_deps and deps is None:
            deps = torch.zeros_like(mu)
        return dmu, dlv, deps


# ------------------------------------------------------------------------------------------------ C++
class CppBackend:
    """Launchers for ``bicycle._C`` (CPU, float32/float64 buffers; other float dtypes computed in float32)."""

    name = "cpp"

    def __init__(self, ext: Any) -> None:
        self.ext = ext

    def forward(self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float) -> tuple[Tensor, Tensor]:
        out_dtype = compute_dtype(mu, logvar, eps)
        dtype = cpp_float_dtype(out_dtype)
        mu, logvar, eps = (cpu_buffer(t, dtype) for t in (mu, logvar, eps))
        z = torch.empty_like(mu)
        kl = self.ext.reparam_kl_forward(mu.numpy(), logvar.numpy(), eps.numpy(), z.numpy(), float(kl_weight),
                                         torch.get_num_threads())
        return z.to(out_dtype), torch.tensor(kl, dtype=out_dtype)

    def backward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, gz: Tensor | None, gkl: Tensor | None,
        need_deps: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        out_dtype = mu.dtype
        dtype = cpp_float_dtype(out_dtype)
        mu, logvar, eps = (cpu_buffer(t, dtype) for t in (mu, logvar, eps))
        dmu, dlv = torch.empty_like(mu), torch.empty_like(mu)
        deps = torch.empty_like(mu) if need_deps else None
        self.ext.reparam_kl_backward(
            mu.numpy(), logvar.numpy(), eps.numpy(), None if gz is None else cpu_buffer(gz, dtype).numpy(),
            0.0 if gkl is None else float(gkl), float(kl_weight), dmu.numpy(), dlv.numpy(),
            None if deps is None else deps.numpy(), torch.get_num_threads(),
        )
        return dmu.to(out_dtype), dlv.to(out_dtype), None if deps is None else deps.to(out_dtype)


# ------------------------------------------------------------------------------------------- autograd
class ReparamKLFunction(torch.autograd.Function):
    """(mu, logvar, eps) -> (z, kl) through ``backend``; backward takes grads for both z and kl."""

    @staticmethod
    def forward(ctx: Any, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, backend: Backend):
        dtype = compute_dtype(mu, logvar, eps)
        mu, logvar, eps = (t.to(dtype) for t in (mu, logvar, eps))
        z, kl = backend.forward(mu, logvar, eps, kl_weight)
        ctx.save_for_backward(mu, logvar, eps)
        ctx.kl_weight, ctx.backend = kl_weight, backend
        ctx.set_materialize_grads(False)
        return z, kl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gz: Tensor | None, gkl: Tensor | None):
        mu, logvar, eps = ctx.saved_tensors
        if gz is None and gkl is None:
            return None, None, None, None, None
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        dmu, dlv, deps = ctx.backend.backward(
            mu.contiguous(), logvar.contiguous(), eps.contiguous(), ctx.kl_weight, gz, gkl, need_eps
        )
        return (dmu if need_mu else None), (dlv if need_lv else None), (deps if need_eps else None), None, None


def reparam_kl_fused(mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, backend: Backend) -> tuple[Tensor, Tensor]:
    """Fused (z, kl) through ``backend`` (a :class:`TritonBackend` or :class:`CppBackend`). mu, logvar, eps: [N, nz]."""
    check_inputs(mu, logvar, eps)
    return ReparamKLFunction.apply(mu, logvar, eps, float(kl_weight), backend)
