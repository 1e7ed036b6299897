"""The one dispatcher for fused ops: ``impl = "auto" | "triton" | "cpp" | "ref"``.

``auto`` picks Triton for CUDA tensors, C++ for CPU tensors, the reference otherwise. An explicitly
requested impl that cannot run raises :class:`OpUnavailableError` with the reason; nothing falls back
silently. This is the only module that imports ``bicycle.kernels`` and ``bicycle._C``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor

from bicycle.kernels.lsgan import lsgan_d_ref, lsgan_ref
from bicycle.kernels.prepare_batch import prepare_batch_ref
from bicycle.kernels.reparam_kl import reparam_kl_ref

Impl = Literal["auto", "triton", "cpp", "ref"]
IMPLS: tuple[str, ...] = ("auto", "triton", "cpp", "ref")


class OpUnavailableError(RuntimeError):
    """An explicitly requested implementation cannot run here."""


def _check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")


def resolve_impl(impl: str, device_type: str) -> str:
    """The concrete impl used for tensors on ``device_type`` ("cpu", "cuda", ...)."""
    _check_impl(impl)
    if impl != "auto":
        return impl
    return "ref"


def reparam_kl(mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float = 1.0, *, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """z = mu + eps * exp(logvar / 2) and kl = -0.5 * kl_weight * SUM(1 + logvar - mu^2 - exp(logvar)).

    mu, logvar, eps: [N, nz]. Returns z [N, nz] and a 0-dim kl.
    """
    chosen = resolve_impl(impl, mu.device.type)
    if chosen == "ref":
        return reparam_kl_ref(mu, logvar, eps, kl_weight)
    raise OpUnavailableError(f"reparam_kl: impl {chosen!r} is not built yet")


def lsgan(preds: Sequence[Tensor], target: float, *, impl: str = "auto") -> Tensor:
    """SUM over scales of MEAN((pred - target)^2). preds: list of [N, 1, h_s, w_s]. Returns 0-dim."""
    chosen = resolve_impl(impl, preds[0].device.type)
    if chosen == "ref":
        return lsgan_ref(preds, target)
    raise OpUnavailableError(f"lsgan: impl {chosen!r} is not built yet")


def lsgan_d(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor], *, impl: str = "auto") -> Tensor:
    """Discriminator LSGAN loss: lsgan(fake, 0) + lsgan(real, 1). Returns 0-dim."""
    chosen = resolve_impl(impl, preds_fake[0].device.type)
    if chosen == "ref":
        return lsgan_d_ref(preds_fake, preds_real)
    raise OpUnavailableError(f"lsgan_d: impl {chosen!r} is not built yet")


def prepare_batch(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, size: int, *, impl: str = "auto") -> Tensor:
    """uint8 [N, H, W, C] -> crop (top, left: int64 [N]) / flip (bool [N]) / normalise -> float32 [N, C, size, size]."""
    chosen = resolve_impl(impl, images.device.type)
    if chosen == "ref":
        return prepare_batch_ref(images, top, left, flip, size)
    raise OpUnavailableError(f"prepare_batch: impl {chosen!r} is not built yet")
