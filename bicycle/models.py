"""The models selectable with ``--model``: BicycleGAN and the paper's baselines, one engine.

Each model is a :class:`ModelSpec`: which networks it has, its noise, and its G/E losses (one
function of :mod:`bicycle.losses`, where the equations are written out).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bicycle.losses import (GELosses, LossSetup, bicycle_losses, cae_gan_losses, clr_gan_losses, cvae_gan_losses,
                            pix2pix_losses)
from bicycle.nets import Nets

NoiseShapes = Callable[[int], dict[str, int]]


@dataclass(frozen=True)
class ModelSpec:
    """A model: its networks, its noise (name -> rows, each row [nz]) and its G/E losses.
    ``variational``: E is trained as a posterior (KL to the prior), so its variance means something."""

    name: str
    uses_encoder: bool
    discriminators: tuple[str, ...]
    noise_rows: NoiseShapes
    losses: Callable[[Nets, Tensor, Tensor, dict[str, Tensor], LossSetup], GELosses]
    summary: str
    variational: bool = False


def draw_noise(model: ModelSpec, batch_size: int, nz: int, device: torch.device | str,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Standard normal noise for one step: {"eps": [n, nz], "z": [n, nz], ...} per the model."""
    return {k: torch.randn(n, nz, device=device, generator=generator) for k, n in model.noise_rows(batch_size).items()}


MODELS: dict[str, ModelSpec] = {
    "bicycle": ModelSpec("bicycle", True, ("D", "D2"), lambda n: {"eps": n // 2, "z": n // 2}, bicycle_losses,
                         "BicycleGAN: cVAE-GAN (B->z->B) + cLR-GAN (z->B->z), two discriminators", variational=True),
    "pix2pix": ModelSpec("pix2pix", False, ("D",), lambda n: {"z": n}, pix2pix_losses,
                         "pix2pix + noise: G(A, z) with GAN + L1; no encoder"),
    "cae-gan": ModelSpec("cae-gan", True, ("D",), lambda n: {}, cae_gan_losses,
                         "conditional autoencoder GAN: z = mu(E(B)), GAN + L1, no KL"),
    "cvae-gan": ModelSpec("cvae-gan", True, ("D",), lambda n: {"eps": n}, cvae_gan_losses,
                          "conditional VAE-GAN: the B->z->B cycle alone (GAN + L1 + KL)", variational=True),
    "clr-gan": ModelSpec("clr-gan", True, ("D",), lambda n: {"z": n}, clr_gan_losses,
                         "conditional latent regressor GAN: the z->B->z cycle alone (GAN + latent L1)"),
}
