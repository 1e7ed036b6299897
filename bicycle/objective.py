"""The loss terms of BicycleGAN, written to read like the paper. Fused ops come from bicycle.ops."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bicycle import ops


def gan_loss(preds: Sequence[Tensor], real: bool, mode: str, impl: str) -> Tensor:
    """Generator-side GAN loss over a multi-scale D's outputs, summed over scales (mean per scale).

    lsgan: SUM_s MEAN((p_s - t)^2); vanilla: SUM_s BCE-with-logits(p_s, t); t = 1 if real else 0.
    """
    target = 1.0 if real else 0.0
    if mode == "lsgan":
        return ops.lsgan(preds, target, impl=impl)
    return sum((F.binary_cross_entropy_with_logits(p, torch.full_like(p, target)) for p in preds),
               preds[0].new_zeros(()))


def discriminator_loss(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor], mode: str, impl: str) -> Tensor:
    """L_D = GAN(D(fake), fake) + GAN(D(real), real): fake + real, no 0.5."""
    if mode == "lsgan":
        return ops.lsgan_d(preds_fake, preds_real, impl=impl)
    return gan_loss(preds_fake, False, mode, impl) + gan_loss(preds_real, True, mode, impl)


def l1(x: Tensor, y: Tensor) -> Tensor:
    """MEAN |x - y| (the paper's L1 terms)."""
    return (x - y).abs().mean()


def encode(mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, impl: str) -> tuple[Tensor, Tensor]:
    """z = mu + exp(logvar / 2) * eps and L_KL = -0.5 * kl_weight * SUM(1 + logvar - mu^2 - exp(logvar))."""
    return ops.reparam_kl(mu, logvar, eps, kl_weight, impl=impl)
