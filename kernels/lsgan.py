"""Least-squares GAN loss over the outputs of a multi-scale PatchGAN.

loss = SUM over scales s of MEAN((pred_s - target)^2)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def lsgan_ref(preds: Sequence[Tensor], target: float) -> Tensor:
    """Reference, written like the original code: one MSELoss per scale, summed. preds: [N, 1, h_s, w_s]."""
    loss = preds[0].new_zeros(())
    for pred in preds:
        loss = loss + torch.nn.functional.mse_loss(pred, torch.full_like(pred, target))
    return loss


def lsgan_d_ref(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor]) -> Tensor:
    """Discriminator loss, fake + real (no 0.5): lsgan(fake, 0) + lsgan(real, 1)."""
    return lsgan_ref(preds_fake, 0.0) + lsgan_ref(preds_real, 1.0)
