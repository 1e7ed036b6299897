"""The losses of BicycleGAN and of the paper's baselines, written to read like the paper.

Notation: A1, B1 the "encoded" half of a batch, A2, B2 the "random" half; E(B) = (mu, logvar);
z_enc = mu + exp(logvar / 2) * eps; z_rand ~ N(0, I); D and D2 multi-scale discriminators.

    L_GAN(D, x)  = SUM over D's scales of MEAN((D_s(x) - 1)^2)        (lsgan; vanilla: BCE with logits)
    L_KL         = -0.5 * SUM(1 + logvar - mu^2 - exp(logvar))        (a SUM over batch and dims, not a mean)
    L_1(x, y)    = MEAN |x - y|
    L_D(D)       = L_GAN(D, fake -> 0) + L_GAN(D, real -> 1)          (fake + real, no 0.5)

bicycle    fake_enc = G(A1, z_enc), fake_rand = G(A1, z_rand)   (both conditioned on A1, as the paper's code)
           G and E:  lambda_GAN L_GAN(D, fake_enc) + lambda_GAN2 L_GAN(D2, fake_rand)
                     + lambda_L1 L_1(fake_enc, B1) + lambda_KL L_KL
           G only:   lambda_z L_1(mu(E(fake_rand)), z_rand)        (E frozen in that branch)
                     [+ lambda_ms / (L_1(fake_rand, fake_enc) / L_1(z_rand, z_enc) + 1e-5), fake_enc and z_enc
                      detached: mode seeking, MSGAN; only with --lambda-ms, off as the paper]
           D on (fake_enc, B1); D2 on (fake_rand, B2).
           With a conditional D (--conditional-d, the original's --conditional_D) every D and D2 input is [A, B]
           concatenated over channels: D on ([A1, fake_enc], [A1, B1]); D2 on ([A1, fake_rand], [A2, B2]).
pix2pix    pix2pix + noise: fake = G(A, z_rand). G: lambda_GAN L_GAN(D, fake) + lambda_L1 L_1(fake, B). No E.
cae-gan    z = mu(E(B)) (no sampling, no KL); fake = G(A, z). G and E: lambda_GAN L_GAN(D, fake) + lambda_L1 L_1(fake, B).
cvae-gan   fake = G(A, z_enc). G and E: lambda_GAN L_GAN(D, fake) + lambda_L1 L_1(fake, B) + lambda_KL L_KL.
clr-gan    fake = G(A, z_rand). G and E: lambda_GAN2 L_GAN(D, fake) + lambda_z L_1(mu(E(fake)), z_rand)
           (here the latent loss trains G and E together: E has no other signal).
The baselines' D steps on (fake, B). Each ``*_losses`` function below is one of these rows; the
training step (:mod:`bicycle.train.step`) steps G and E on ``GELosses.loss``, then each discriminator
on :func:`discriminator_loss` of its (detached fake, real) pair. Fused ops come from :mod:`bicycle.ops`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from bicycle import ops
from bicycle.config import LossWeights
from bicycle.nets import Nets, call_twice, frozen


# -- the terms ------------------------------------------------------------------------------------

def gan_loss(preds: Sequence[Tensor], real: bool, mode: str, impl: str) -> Tensor:
    """L_GAN over a multi-scale D's outputs ([N, 1, h_s, w_s] each), summed over scales (mean per scale).

    lsgan: SUM_s MEAN((p_s - t)^2); vanilla: SUM_s BCE-with-logits(p_s, t); t = 1 if real else 0.
    """
    target = 1.0 if real else 0.0
    if mode == "lsgan":
        return ops.lsgan(preds, target, impl=impl)
    return sum((F.binary_cross_entropy_with_logits(p, torch.full_like(p, target)) for p in preds),
               preds[0].new_zeros(()))


def discriminator_loss(preds_fake: Sequence[Tensor], preds_real: Sequence[Tensor], mode: str, impl: str) -> Tensor:
    """L_D = L_GAN(D(fake), fake) + L_GAN(D(real), real): fake + real, no 0.5."""
    if mode == "lsgan":
        return ops.lsgan_d(preds_fake, preds_real, impl=impl)
    return gan_loss(preds_fake, False, mode, impl) + gan_loss(preds_real, True, mode, impl)


def l1(x: Tensor, y: Tensor) -> Tensor:
    """L_1 = MEAN |x - y| (the paper's L1 terms)."""
    return (x - y).abs().mean()


def reparameterize(
    mu: Tensor, logvar: Tensor, eps: Tensor, kl_weight: float, impl: str, free_bits: float = 0.0
) -> tuple[Tensor, Tensor]:
    """mu, logvar, eps: [n, nz]. z = mu + exp(logvar / 2) * eps and kl_weight * L_KL (0-dim).

    ``free_bits`` f > 0: L_KL = n * SUM_j max(m_j, f), m_j the batch-mean KL of dimension j (free bits)."""
    return ops.reparam_kl(mu, logvar, eps, kl_weight, free_bits, impl=impl)


# -- what a model's losses need and return --------------------------------------------------------

@dataclass(frozen=True)
class LossSetup:
    """What the losses need besides the networks and the batch: the weights, the GAN mode, the fused-op
    impl. ``kl_scale``: None, or a 0-dim device tensor multiplying lambda_KL (the warm-up), refilled in
    place between steps so that a captured graph reads the current value. ``world_size``: data-parallel
    ranks; L_KL is a SUM over the (global) batch while DDP averages the ranks' gradients, so each rank's
    KL sum counts ``world_size`` times (every other term is a mean over equal shards: their average is
    the global mean). ``conditional_d``: the discriminators see A beside B (:meth:`judged`)."""

    weights: LossWeights
    gan_mode: str = "lsgan"
    impl: str = "auto"
    kl_scale: Tensor | None = None
    world_size: int = 1
    conditional_d: bool = False

    def judged(self, a: Tensor, b: Tensor) -> Tensor:
        """What a discriminator sees of the pair (A [n, Ca, S, S], B [n, Cb, S, S]): B, or [A, B] [n, Ca + Cb, S, S]
        with a conditional D."""
        return torch.cat([a, b], 1) if self.conditional_d else b

    def encode(self, mu: Tensor, logvar: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(z [n, nz], lambda_KL * L_KL) with :func:`reparameterize`, the warm-up applied."""
        # free bits floor this rank's batch means: check_parallel refuses them under torchrun (world_size > 1)
        z, kl = reparameterize(mu, logvar, eps, self.weights.kl, self.impl, self.weights.kl_free_bits)
        if self.world_size != 1:
            kl = kl * self.world_size
        return z, kl if self.kl_scale is None else kl * self.kl_scale


@dataclass
class GELosses:
    """loss: drives G and E. metrics: its weighted terms. d_pairs: (discriminator name, fake, real),
    fake not yet detached."""

    loss: Tensor
    metrics: dict[str, Tensor]
    d_pairs: list[tuple[str, Tensor, Tensor]] = field(default_factory=list)


# -- one function per model (a: [N, Ca, S, S], b: [N, Cb, S, S], noise: per draw_noise) -----------

def bicycle_losses(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], s: LossSetup) -> GELosses:
    w, half = s.weights, a.shape[0] // 2
    a1, a2, b1, b2 = a[:half], a[half:], b[:half], b[half:]
    mu, logvar = nets.E(b1)
    z_enc, kl = s.encode(mu, logvar, noise["eps"])
    fake_enc, fake_rand = call_twice(nets.G, (a1, z_enc), (a1, noise["z"]))
    judged_enc, judged_rand = s.judged(a1, fake_enc), s.judged(a1, fake_rand)
    with frozen(nets.D, nets.D2) as (D, D2):
        g_gan = w.gan * gan_loss(D(judged_enc), True, s.gan_mode, s.impl)
        g_gan2 = w.gan2 * gan_loss(D2(judged_rand), True, s.gan_mode, s.impl)
    g_l1 = w.l1 * l1(fake_enc, b1)
    with frozen(nets.E) as (E,):  # the latent loss reaches G only
        mu2, _ = E(fake_rand)
    z_l1 = w.z * l1(mu2, noise["z"])
    loss = g_gan + g_gan2 + g_l1 + kl + z_l1
    metrics = {"G_GAN": g_gan, "G_GAN2": g_gan2, "G_L1": g_l1, "kl": kl, "z_L1": z_l1}
    if w.mode_seeking > 0:
        metrics["ms"] = w.mode_seeking * mode_seeking(fake_rand, fake_enc.detach(), noise["z"], z_enc.detach())
        loss = loss + metrics["ms"]
    return GELosses(loss, metrics, [("D", judged_enc, s.judged(a1, b1)), ("D2", judged_rand, s.judged(a2, b2))])


def mode_seeking(out1: Tensor, out2: Tensor, z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """MSGAN's term (Mao et al., 2019): out [n, C, S, S], z [n, nz] -> 1 / (mean|out1 - out2| / mean|z1 - z2| + eps),
    small when the outputs differ as much as their codes; minimising it pushes G to follow z where it does not."""
    return 1.0 / (torch.mean(torch.abs(out1 - out2)) / torch.mean(torch.abs(z1 - z2)) + eps)


def _gan_l1(nets: Nets, a: Tensor, fake: Tensor, b: Tensor, s: LossSetup) -> tuple[Tensor, Tensor]:
    """lambda_GAN L_GAN(D, fake) (D frozen) and lambda_L1 L_1(fake, B): the baselines' shared terms."""
    with frozen(nets.D) as (D,):
        g_gan = s.weights.gan * gan_loss(D(s.judged(a, fake)), True, s.gan_mode, s.impl)
    return g_gan, s.weights.l1 * l1(fake, b)


def _baseline_pairs(a: Tensor, fake: Tensor, b: Tensor, s: LossSetup) -> list[tuple[str, Tensor, Tensor]]:
    return [("D", s.judged(a, fake), s.judged(a, b))]


def pix2pix_losses(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], s: LossSetup) -> GELosses:
    fake = nets.G(a, noise["z"])
    g_gan, g_l1 = _gan_l1(nets, a, fake, b, s)
    return GELosses(g_gan + g_l1, {"G_GAN": g_gan, "G_L1": g_l1}, _baseline_pairs(a, fake, b, s))


def cae_gan_losses(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], s: LossSetup) -> GELosses:
    mu, _ = nets.E(b)
    fake = nets.G(a, mu)
    g_gan, g_l1 = _gan_l1(nets, a, fake, b, s)
    return GELosses(g_gan + g_l1, {"G_GAN": g_gan, "G_L1": g_l1}, _baseline_pairs(a, fake, b, s))


def cvae_gan_losses(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], s: LossSetup) -> GELosses:
    mu, logvar = nets.E(b)
    z, kl = s.encode(mu, logvar, noise["eps"])
    fake = nets.G(a, z)
    g_gan, g_l1 = _gan_l1(nets, a, fake, b, s)
    return GELosses(g_gan + g_l1 + kl, {"G_GAN": g_gan, "G_L1": g_l1, "kl": kl}, _baseline_pairs(a, fake, b, s))


def clr_gan_losses(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], s: LossSetup) -> GELosses:
    w = s.weights
    fake = nets.G(a, noise["z"])
    with frozen(nets.D) as (D,):
        g_gan = w.gan2 * gan_loss(D(s.judged(a, fake)), True, s.gan_mode, s.impl)
    mu2, _ = nets.E(fake)
    z_l1 = w.z * l1(mu2, noise["z"])
    return GELosses(g_gan + z_l1, {"G_GAN": g_gan, "z_L1": z_l1}, _baseline_pairs(a, fake, b, s))
