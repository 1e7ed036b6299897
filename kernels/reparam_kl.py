"""Reparameterization + KL divergence.

z  = mu + eps * exp(logvar / 2)                                   [N, nz]
kl = -0.5 * kl_weight * SUM(1 + logvar - mu^2 - exp(logvar))      0-dim (a sum, not a mean)
"""
from __future__ import annotations

import torch
from torch import Tensor


def reparam_kl_ref(mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference, written like the original BicycleGAN code. mu, logvar, eps: [N, nz]."""
    std = logvar.mul(0.5).exp()
    z = eps.mul(std).add(mu)
    kl_element = mu.pow(2).add(logvar.exp()).mul(-1).add(1).add(logvar)
    kl = torch.sum(kl_element).mul(-0.5) * kl_weight
    return z, kl
