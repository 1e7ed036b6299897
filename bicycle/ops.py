"""The one dispatcher for fused ops: ``impl = "auto" | "triton" | "cpp" | "ref"``.

``auto`` picks Triton for CUDA tensors (the reference when triton is not importable; ``bicycle env``
says so), C++ for CPU tensors (the reference when ``bicycle._C`` did not build), the reference
otherwise. An explicitly requested impl that cannot run raises
:class:`~bicycle.errors.OpUnavailableError` (re-exported here) with the reason; nothing falls back
silently. :func:`check_impl` asks that before training starts. This is the only module that imports
``bicycle.kernels`` and ``bicycle._C``. :func:`pick_device` answers the other question of what runs here:
the device a ``--device`` value names on this machine.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor

from bicycle.config import IMPLS
from bicycle.errors import ConfigError, OpUnavailableError
from bicycle.kernels import _common
from bicycle.kernels import lsgan as _lsgan
from bicycle.kernels import reparam_kl as _reparam
from bicycle.kernels.lsgan import lsgan_d_ref, lsgan_ref
from bicycle.kernels.prepare_batch import prepare_batch_cpp, prepare_batch_ref
from bicycle.kernels.reparam_kl import reparam_kl_ref

Impl = Literal["auto", "triton", "cpp", "ref"]
OPS: tuple[str, ...] = ("reparam_kl", "lsgan", "lsgan_d", "prepare_batch")
TRAINING_OPS: tuple[str, ...] = ("reparam_kl", "lsgan", "lsgan_d")  # the ops a training step dispatches
_TRITON_OPS = frozenset({"reparam_kl", "lsgan", "lsgan_d"})


def _check_name(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")


@functools.cache
def _ext() -> tuple[ModuleType | None, str | None]:
    """(bicycle._C, None) or (None, why it cannot be imported)."""
    try:
        from bicycle import _C
    except ImportError as exc:
        return None, f"the C++ extension bicycle._C is not available ({exc}); reinstall bicycle with a C++ compiler"
    return _C, None


def unavailable_reason(impl: str, device_type: str, op: str | None = None) -> str | None:
    """Why ``impl`` cannot run ``op`` on ``device_type`` tensors, or None if it can."""
    _check_name(impl)
    if impl in ("ref", "auto"):
        return None
    if impl == "cpp":
        _, why = _ext()
        if why:
            return why
        if device_type != "cpu":
            return f"the C++ ops take CPU tensors, got {device_type} tensors"
        return None
    if op is not None and op not in _TRITON_OPS:
        return f"{op} has no Triton kernel (use cpp or ref)"
    if not _common.HAS_TRITON:
        return "triton is not importable; pip install 'bicycle[triton]'"
    if device_type == "cuda":
        return None
    if device_type == "cpu" and _common.interpreting():
        if not _common.kernels_interpreted(_reparam._fwd_kernel):
            return "TRITON_INTERPRET=1 was set after bicycle.kernels was imported; set it before importing bicycle.ops"
        return None
    return f"the Triton kernels take CUDA tensors, got {device_type} tensors (set TRITON_INTERPRET=1 to interpret on CPU)"


def check_impl(impl: str, device_type: str) -> None:
    """Raise :class:`OpUnavailableError` (one line) if ``impl`` cannot run the training ops on ``device_type``.

    For config resolution, before the first step: ``auto`` and ``ref`` always run; an explicit ``triton``
    or ``cpp`` must run every op in :data:`TRAINING_OPS` on ``device_type`` ("cpu", "cuda") tensors.
    """
    _check_name(impl)
    for op in TRAINING_OPS:
        why = unavailable_reason(impl, device_type, op)
        if why:
            why = " ".join(why.split())  # an ImportError text can span lines
            raise OpUnavailableError(f"--impl {impl}: unavailable on {device_type} tensors: {why}")


def resolve_impl(impl: str, device_type: str, op: str | None = None) -> str:
    """The concrete impl used for tensors on ``device_type`` ("cpu", "cuda", ...); raises if it cannot run."""
    _check_name(impl)
    if impl == "auto":
        return auto_choice(device_type, op)[0]
    why = unavailable_reason(impl, device_type, op)
    if why:
        raise OpUnavailableError(f"{op or 'ops'}: impl {impl!r} is unavailable: {why}")
    return impl


def auto_choice(device_type: str, op: str | None = None) -> tuple[str, str]:
    """(impl, reason) that ``auto`` picks for ``op`` on ``device_type`` tensors."""
    if device_type == "cuda" and (op is None or op in _TRITON_OPS):
        why = unavailable_reason("triton", "cuda", op)
        return ("ref", f"CUDA tensors, but {why}") if why else ("triton", "CUDA tensors: fused Triton kernels")
    if device_type == "cpu":
        why = unavailable_reason("cpp", "cpu", op)
        return ("ref", f"CPU tensors, but {why}") if why else ("cpp", "CPU tensors: fused C++ extension")
    return "ref", f"no fused kernel for {op or 'ops'} on {device_type} tensors"


@functools.cache
def _backend(module: ModuleType, impl: str):
    return module.TritonBackend() if impl == "triton" else module.CppBackend(_ext()[0])


def reparam_kl(
    mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float = 1.0, free_bits: float = 0.0, *, impl: str = "auto"
) -> tuple[Tensor, Tensor]:
    """z = mu + eps * exp(logvar / 2) and kl = -0.5 * kl_weight * SUM(1 + logvar - mu^2 - exp(logvar)).

    mu, logvar, eps: [N, nz]. Returns z [N, nz] and a 0-dim kl. Differentiable in mu, logvar, eps.
    ``free_bits`` f > 0 (free bits): kl = kl_weight * N * SUM_j max(m_j, f), m_j the batch-mean KL of
    dimension j; a dimension with m_j < f gets no KL gradient (m_j == f passes through). Every impl
    implements it (see :mod:`bicycle.kernels.reparam_kl`); f = 0 is the plain sum.
    """
    _reparam.check_inputs(mu, logvar, eps)
    _reparam.check_free_bits(mu, free_bits)
    chosen = resolve_impl(impl, mu.device.type, "reparam_kl")
    if free_bits == 0:
        if chosen == "ref":
            return reparam_kl_ref(mu, logvar, eps, kl_weight)
        return _reparam.reparam_kl_fused(mu, logvar, eps, kl_weight, _backend(_reparam, chosen))
    if chosen == "ref":
        return reparam_kl_ref(mu, logvar, eps, kl_weight, free_bits)
    return _reparam.reparam_kl_fused(mu, logvar, eps, kl_weight, _backend(_reparam, chosen), free_bits)


def lsgan(preds: Sequence[Tensor], target: float, *, impl: str = "auto") -> Tensor:
    """SUM over scales of MEAN((pred - target)^2). preds: list of [N, 1, h_s, w_s]. Returns 0-dim."""
    _lsgan.check_preds(preds)
    chosen = resolve_impl(impl, preds[0].device.type, "lsgan")
    if chosen == "ref":
        return lsgan_ref(preds, target)
    return _lsgan.lsgan_fused(preds, target, _backend(_lsgan, chosen))


def lsgan_d(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor], *, impl: str = "auto") -> Tensor:
    """Discriminator LSGAN loss: lsgan(fake, 0) + lsgan(real, 1). Returns 0-dim."""
    _lsgan.check_preds(preds_fake, "preds_fake")
    _lsgan.check_preds(preds_real, "preds_real")
    chosen = resolve_impl(impl, preds_fake[0].device.type, "lsgan_d")
    if chosen == "ref":
        return lsgan_d_ref(preds_fake, preds_real)
    return _lsgan.lsgan_d_fused(preds_fake, preds_real, _backend(_lsgan, chosen))


def prepare_batch(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, size: int, *, impl: str = "auto") -> Tensor:
    """uint8 [N, H, W, C] -> crop (top, left: int64 [N]) / flip (bool [N]) / normalise -> float32 [N, C, size, size]."""
    chosen = resolve_impl(impl, images.device.type, "prepare_batch")
    if chosen == "ref":
        return prepare_batch_ref(images, top, left, flip, size)
    return prepare_batch_cpp(_ext()[0], images, top, left, flip, size)


def pick_device(requested: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a ConfigError."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {requested!r} is not supported: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def check_cuda_graphs(setting: bool | None, device: torch.device) -> None:
    """An explicit request for CUDA graphs on a device without them is a usage error."""
    if setting and device.type != "cuda":
        raise ConfigError(f"--cuda-graphs needs a CUDA device, but the run uses {device.type!r}: "
                          f"drop the flag or pass --no-cuda-graphs (the default there is eager)")
