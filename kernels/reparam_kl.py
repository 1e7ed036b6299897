"""Reparameterization + KL divergence.

z  = mu + eps * exp(logvar / 2)                                   [N, nz]
kl = -0.5 * kl_weight * SUM(1 + logvar - mu^2 - exp(logvar))      0-dim (a sum, not a mean)

Backward, with s = exp(logvar / 2), gz = dL/dz and gkl = dL/dkl:
dmu     = gz + gkl * w * mu
dlogvar = gz * eps * s / 2 + gkl * w * (s^2 - 1) / 2
deps    = gz * s

Free bits (Kingma et al., 2016), ``free_bits = f > 0``. mu, logvar, eps are [N, nz] (2-D required);
per element k_ij = -0.5 (1 + logvar_ij - mu_ij^2 - exp(logvar_ij)); per dimension the batch mean
m_j = (1/N) SUM_i k_ij; then

kl = kl_weight * N * SUM_j max(m_j, f)

(the floor applies to each dimension's batch-mean KL, then N restores the sum convention: with no
dimension below the floor this equals kl_weight * SUM_ij k_ij). z is unchanged. Backward: with
active_j = 1 if m_j >= f else 0, the KL gradients above are multiplied by active_j per column (a
dimension under its floor gets no KL gradient; the z gradients are untouched). Tie rule: m_j == f counts
as active (pass-through), in all three implementations; each computes m_j in its own summation order,
so a tie is the same rule, not necessarily the same bits. f = 0 does not enter this path at all: it
runs exactly the code above, bit for bit. The floor needs the whole batch: under data parallelism each
rank would floor only its shard's mean (``bicycle.preflight.check_parallel`` refuses it).

Four parts: the reference, the Triton kernels + launchers, the C++ launcher (the extension module is
handed in by ``bicycle.ops``) and the autograd.Function wiring either backend.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from bicycle.errors import OpUnavailableError

from ._common import HAS_TRITON, block_size, compute_dtype, cpp_float_dtype, cpu_buffer, loss_dtype, tl, triton


def reparam_kl_ref(
    mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Reference, written like the original BicycleGAN code. mu, logvar, eps: [N, nz].

    ``free_bits`` > 0: each dimension's batch-mean KL is floored (module docstring; m_j >= f passes through).
    """
    check_free_bits(mu, free_bits)
    std = logvar.mul(0.5).exp()
    z = eps.mul(std).add(mu)
    kl_element = mu.pow(2).add(logvar.exp()).mul(-1).add(1).add(logvar)
    if free_bits == 0:
        kl = torch.sum(kl_element).mul(-0.5) * kl_weight
        return z, kl
    n = kl_element.shape[0]
    per_dim = kl_element.mul(-0.5).mean(dim=0)  # m_j
    floored = torch.where(per_dim >= free_bits, per_dim, torch.full_like(per_dim, free_bits))  # tie: pass-through
    kl = torch.sum(floored) * (kl_weight * n)
    return z, kl


def check_free_bits(mu: Tensor, free_bits: float) -> None:
    """free_bits: finite and >= 0; > 0 needs [N, nz] inputs (the floor is per dimension over the batch)."""
    f = float(free_bits)
    if not (f >= 0 and f != float("inf")):
        raise ValueError(f"reparam_kl: free_bits must be finite and >= 0, got {free_bits!r}")
    if f > 0 and mu.dim() != 2:
        raise ValueError(f"reparam_kl: free_bits > 0 needs [N, nz] inputs, got shape {list(mu.shape)}")


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
    """forward: (z, kl, active); active is None when free_bits == 0, else [nz] of 1.0 / 0.0 (m_j >= f),
    handed back to backward (which multiplies the KL gradients by it per column)."""

    def forward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, free_bits: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor | None]: ...

    def backward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, gz: Tensor | None, gkl: Tensor | None,
        need_deps: bool, active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]: ...


# ---------------------------------------------------------------------------------------------- Triton
if HAS_TRITON:

    @triton.jit
    def _fwd_kernel(mu_ptr, lv_ptr, eps_ptr, z_ptr, part_ptr, n, BLOCK: tl.constexpr, FP64: tl.constexpr):
        # Unweighted partial sums: the weight is applied on the torch side (a Python float kernel argument
        # is typed fp32 when compiled, which would round it in the float64 kernels).
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
        tl.store(part_ptr + pid, tl.sum(term, axis=0))

    @triton.jit
    def _fwd_free_bits_kernel(
        mu_ptr, lv_ptr, eps_ptr, z_ptr, colsum_ptr, n_rows, nz,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, FP64: tl.constexpr,
    ):
        # One program per BLOCK_C columns, looping over the rows in a fixed order: per-column sums without
        # atomics (deterministic). Writes z and SUM_i (1 + logvar - mu^2 - exp(logvar)) for its columns.
        pid = tl.program_id(0)
        cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < nz
        if FP64:
            acc = tl.zeros([BLOCK_C], dtype=tl.float64)
        else:
            acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for r0 in range(0, n_rows, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            offs = rows[:, None] * nz + cols[None, :]
            mask = (rows[:, None] < n_rows) & cmask[None, :]
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
            term = tl.where(mask, 1.0 + lv - mu * mu - s * s, 0.0)
            acc += tl.sum(term, axis=0)
        tl.store(colsum_ptr + cols, acc, mask=cmask)

    @triton.jit
    def _bwd_kernel(
        mu_ptr, lv_ptr, eps_ptr, gz_ptr, wgkl_ptr, dmu_ptr, dlv_ptr, deps_ptr, n, active_ptr, nz,
        BLOCK: tl.constexpr, HAS_GZ: tl.constexpr, HAS_GKL: tl.constexpr, HAS_DEPS: tl.constexpr, FP64: tl.constexpr,
        FREE_BITS: tl.constexpr,
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
            a = tl.load(wgkl_ptr).to(mu.dtype)  # kl_weight * dL/dkl, formed on the device: no host sync
        else:
            a = 0.0
        if FREE_BITS:  # the KL gradient only for dimensions at or above their floor
            a = a * tl.load(active_ptr + offs % nz, mask=mask, other=0.0).to(mu.dtype)
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

    def forward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, free_bits: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        dtype = compute_dtype(mu, logvar, eps)
        mu, logvar, eps = (t.to(dtype).contiguous() for t in (mu, logvar, eps))
        if free_bits != 0:
            return self._forward_free_bits(mu, logvar, eps, kl_weight, free_bits)
        n = mu.numel()
        block = block_size(n, mu.device, self.GPU_BLOCK)
        grid = triton.cdiv(max(n, 1), block)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        z = torch.empty_like(mu)
        partial = torch.empty(grid, dtype=acc, device=mu.device)
        _fwd_kernel[(grid,)](mu, logvar, eps, z, partial, n, BLOCK=block, FP64=dtype == torch.float64)
        # Partials are summed in a fixed order (deterministic, unlike atomics), then weighted as the
        # reference does: sum * -0.5 * kl_weight.
        return z, (partial.sum().mul(-0.5) * float(kl_weight)).to(loss_dtype(dtype)), None

    def _forward_free_bits(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, free_bits: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        n_rows, nz = mu.shape
        block = block_size(mu.numel(), mu.device, self.GPU_BLOCK)
        # >= 2 on each axis (tl.arange of 1 is avoided); at most 64 columns per program on a GPU
        block_c = max(2, min(triton.next_power_of_2(max(nz, 1)), block // 2, 64 if mu.device.type == "cuda" else block))
        block_r = max(2, block // block_c)
        acc = torch.float64 if mu.dtype == torch.float64 else torch.float32
        z = torch.empty_like(mu)
        colsum = torch.empty(nz, dtype=acc, device=mu.device)
        _fwd_free_bits_kernel[(triton.cdiv(max(nz, 1), block_c),)](
            mu, logvar, eps, z, colsum, n_rows, nz, BLOCK_R=block_r, BLOCK_C=block_c, FP64=mu.dtype == torch.float64,
        )
        # The floor on nz values, in torch ops on the device (no host sync: capture-safe), so that f and
        # kl_weight stay Python doubles (a float kernel argument would be rounded to float32).
        m = colsum * -0.5 / n_rows
        keep = m >= free_bits  # the tie passes through
        floored = torch.where(keep, m, torch.full_like(m, free_bits))
        return z, (floored.sum() * (float(kl_weight) * n_rows)).to(loss_dtype(mu.dtype)), keep.to(acc)

    def backward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, gz: Tensor | None, gkl: Tensor | None,
        need_deps: bool, active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        n = mu.numel()
        block = block_size(n, mu.device, self.GPU_BLOCK)
        dmu, dlv = torch.empty_like(mu), torch.empty_like(mu)
        deps = torch.empty_like(mu) if need_deps and gz is not None else None
        gz_c = gz.contiguous() if gz is not None else mu
        # The weight folded into the loss gradient on the device: no float argument reaches the kernel.
        wgkl = gkl.to(torch.promote_types(gkl.dtype, mu.dtype)) * float(kl_weight) if gkl is not None else mu
        _bwd_kernel[(triton.cdiv(max(n, 1), block),)](
            mu, logvar, eps, gz_c, wgkl, dmu, dlv, deps if deps is not None else mu, n,
            active if active is not None else mu, mu.shape[-1] if active is not None else 1,
            BLOCK=block, HAS_GZ=gz is not None, HAS_GKL=gkl is not None,
            HAS_DEPS=deps is not None, FP64=mu.dtype == torch.float64, FREE_BITS=active is not None,
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

    def forward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, free_bits: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        out_dtype = compute_dtype(mu, logvar, eps)
        dtype = cpp_float_dtype(out_dtype)
        mu, logvar, eps = (cpu_buffer(t, dtype) for t in (mu, logvar, eps))
        z = torch.empty_like(mu)
        if free_bits != 0:
            fn = getattr(self.ext, "reparam_kl_forward_free_bits", None)
            if fn is None:  # an extension built before free bits: refuse rather than drop the floor
                raise OpUnavailableError("reparam_kl: this build of bicycle._C has no free bits "
                                         "(reparam_kl_forward_free_bits); rebuild it (pip install -e .)")
            active = torch.empty(mu.shape[-1], dtype=dtype)
            kl = fn(mu.numpy(), logvar.numpy(), eps.numpy(), z.numpy(), active.numpy(), float(kl_weight),
                    float(free_bits), torch.get_num_threads())
            return z.to(out_dtype), torch.tensor(kl, dtype=loss_dtype(out_dtype)), active
        kl = self.ext.reparam_kl_forward(mu.numpy(), logvar.numpy(), eps.numpy(), z.numpy(), float(kl_weight),
                                         torch.get_num_threads())
        return z.to(out_dtype), torch.tensor(kl, dtype=loss_dtype(out_dtype)), None

    def backward(
        self, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, gz: Tensor | None, gkl: Tensor | None,
        need_deps: bool, active: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        out_dtype = mu.dtype
        dtype = cpp_float_dtype(out_dtype)
        mu, logvar, eps = (cpu_buffer(t, dtype) for t in (mu, logvar, eps))
        dmu, dlv = torch.empty_like(mu), torch.empty_like(mu)
        deps = torch.empty_like(mu) if need_deps else None
        args = (
            mu.numpy(), logvar.numpy(), eps.numpy(), None if gz is None else cpu_buffer(gz, dtype).numpy(),
            0.0 if gkl is None else float(gkl), float(kl_weight), dmu.numpy(), dlv.numpy(),
            None if deps is None else deps.numpy(), torch.get_num_threads(),
        )
        if active is None:
            self.ext.reparam_kl_backward(*args)
        else:
            self.ext.reparam_kl_backward(*args, active=cpu_buffer(active, dtype).numpy())
        return dmu.to(out_dtype), dlv.to(out_dtype), None if deps is None else deps.to(out_dtype)


# ------------------------------------------------------------------------------------------- autograd
class ReparamKLFunction(torch.autograd.Function):
    """(mu, logvar, eps) -> (z, kl) through ``backend``; backward takes grads for both z and kl."""

    @staticmethod
    def forward(ctx: Any, mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, backend: Backend,
                free_bits: float = 0.0):
        dtype = compute_dtype(mu, logvar, eps)
        mu, logvar, eps = (t.to(dtype) for t in (mu, logvar, eps))
        if free_bits == 0:
            z, kl, _ = backend.forward(mu, logvar, eps, kl_weight)
            ctx.save_for_backward(mu, logvar, eps)
        else:
            z, kl, active = backend.forward(mu, logvar, eps, kl_weight, free_bits)
            ctx.save_for_backward(mu, logvar, eps, active)
        ctx.kl_weight, ctx.backend = kl_weight, backend
        ctx.set_materialize_grads(False)
        return z, kl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gz: Tensor | None, gkl: Tensor | None):
        mu, logvar, eps, *rest = ctx.saved_tensors
        if gz is None and gkl is None:
            return None, None, None, None, None, None
        need_mu, need_lv, need_eps = ctx.needs_input_grad[:3]
        if not rest:
            dmu, dlv, deps = ctx.backend.backward(
                mu.contiguous(), logvar.contiguous(), eps.contiguous(), ctx.kl_weight, gz, gkl, need_eps
            )
        else:
            dmu, dlv, deps = ctx.backend.backward(
                mu.contiguous(), logvar.contiguous(), eps.contiguous(), ctx.kl_weight, gz, gkl, need_eps, rest[0]
            )
        return (dmu if need_mu else None), (dlv if need_lv else None), (deps if need_eps else None), None, None, None


def reparam_kl_fused(
    mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, backend: Backend, free_bits: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Fused (z, kl) through ``backend`` (a :class:`TritonBackend` or :class:`CppBackend`). mu, logvar, eps: [N, nz].

    ``free_bits`` > 0: the per-dimension floor of the module docstring (both backends implement it)."""
    check_inputs(mu, logvar, eps)
    check_free_bits(mu, free_bits)
    if free_bits == 0:
        return ReparamKLFunction.apply(mu, logvar, eps, float(kl_weight), backend)
    return ReparamKLFunction.apply(mu, logvar, eps, float(kl_weight), backend, float(free_bits))
