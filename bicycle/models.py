"""The models selectable with ``--model``: BicycleGAN and the paper's baselines, one engine.

Each model is a :class:`ModelSpec`: which networks it has and a function computing its G/E
objective. The training step (:mod:`bicycle.train.step`) is shared: G and E step on ``loss``, then
each discriminator steps on its (detached fake, real) pair with the same D weights the G/E update saw.

bicycle    A1,B1 encoded half, A2,B2 random half.  z_enc = mu(B1) + exp(logvar/2) eps;
           fake_enc = G(A1, z_enc); fake_rand = G(A1, z_rand).
           G+E:  lambda_GAN L_GAN(D, fake_enc) + lambda_GAN2 L_GAN(D2, fake_rand)
                 + lambda_L1 |fake_enc - B1| + lambda_KL KL(mu, logvar)
           G only: lambda_z |mu(E(fake_rand)) - z_rand|   (E frozen in that branch)
           D on (fake_enc, B1); D2 on (fake_rand, B2).
pix2pix    pix2pix + noise: fake = G(A, z_rand). G: lambda_GAN L_GAN(D, fake) + lambda_L1 |fake - B|. No E.
           D on (fake, B).
cae-gan    z = mu(E(B)) (no sampling, no KL); fake = G(A, z).
           G+E: lambda_GAN L_GAN(D, fake) + lambda_L1 |fake - B|. D on (fake, B).
cvae-gan   z = mu + exp(logvar/2) eps; fake = G(A, z).
           G+E: lambda_GAN L_GAN(D, fake) + lambda_L1 |fake - B| + lambda_KL KL. D on (fake, B).
clr-gan    fake = G(A, z_rand).  G+E: lambda_GAN2 L_GAN(D, fake) + lambda_z |mu(E(fake)) - z_rand|
           (here the latent loss trains G and E together: E has no other signal). D on (fake, B).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bicycle.config import LossWeights
from bicycle.objective import encode, gan_loss, l1

Outputs = Tensor | list[Tensor]


@dataclass
class Nets:
    """The networks of a run. E and D2 are None for models that do not use them."""

    G: nn.Module
    D: nn.Module
    E: nn.Module | None = None
    D2: nn.Module | None = None

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(k, m) for k, m in (("G", self.G), ("E", self.E), ("D", self.D), ("D2", self.D2)) if m is not None]


@dataclass
class GEResult:
    """loss: drives G and E. d_pairs: (discriminator name, fake, real), fake not yet detached."""

    loss: Tensor
    metrics: dict[str, Tensor]
    d_pairs: list[tuple[str, Tensor, Tensor]] = field(default_factory=list)


@dataclass(frozen=True)
class Objective:
    """What a model's objective needs besides the networks and the batch. ``kl_scale``: None, or a
    0-dim device tensor multiplying lambda_KL (the warm-up), refilled in place between steps so that a
    captured graph reads the current value."""

    weights: LossWeights
    gan_mode: str = "lsgan"
    impl: str = "auto"
    kl_scale: Tensor | None = None

    def encode(self, mu: Tensor, logvar: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(z [n, nz], lambda_KL * KL) with the reparameterisation of :func:`bicycle.objective.encode`."""
        z, kl = encode(mu, logvar, eps, self.weights.kl, self.impl)
        return z, kl if self.kl_scale is None else kl * self.kl_scale


@contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Parameters of ``modules`` get no gradient from what is computed inside (requires_grad off)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def couples_samples(module: nn.Module) -> bool:
    """True when ``module``'s forward mixes the samples of a batch (BatchNorm's batch statistics), so
    that one call on two concatenated batches would compute something else than two calls."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _halves(out: Outputs, n: int) -> tuple[Outputs, Outputs]:
    if isinstance(out, Tensor):
        return out[:n], out[n:]
    return [o[:n] for o in out], [o[n:] for o in out]


def call_twice(net: nn.Module, first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> tuple[Outputs, Outputs]:
    """(net(*first), net(*second)). When ``net`` treats samples independently, as one call on the
    concatenated batch: the same maths with half the kernel launches and larger convolutions (the demo
    preset's CPU step: 1.15-1.8x faster, benchmarks/results/step_merge_cpu_20261127.json). Inputs: [n, ...] each,
    the same n in both; outputs: a tensor or a list of tensors, [n, ...] each."""
    if couples_samples(net):
        return net(*first), net(*second)
    n = first[0].shape[0]
    return _halves(net(*(torch.cat([x, y]) for x, y in zip(first, second))), n)


NoiseShapes = Callable[[int], dict[str, int]]


@dataclass(frozen=True)
class ModelSpec:
    """A model: its networks, its noise (name -> rows, each row [nz]) and its G/E objective.
    ``variational``: E is trained as a posterior (KL to the prior), so its variance means something."""

    name: str
    uses_encoder: bool
    discriminators: tuple[str, ...]
    noise_rows: NoiseShapes
    objective: Callable[[Nets, Tensor, Tensor, dict[str, Tensor], Objective], GEResult]
    summary: str
    variational: bool = False


def draw_noise(model: ModelSpec, batch_size: int, nz: int, device: torch.device | str,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Standard normal noise for one step: {"eps": [n, nz], "z": [n, nz], ...} per the model."""
    return {k: torch.randn(n, nz, device=device, generator=generator) for k, n in model.noise_rows(batch_size).items()}


def _bicycle(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], o: Objective) -> GEResult:
    w, half = o.weights, a.shape[0] // 2
    a1, b1, b2 = a[:half], b[:half], b[half:]
    mu, logvar = nets.E(b1)
    z_enc, kl = o.encode(mu, logvar, noise["eps"])
    # G(A1, z_enc) and G(A1, z_rand): both conditioned on A1, as in the paper's code
    fake_enc, fake_rand = call_twice(nets.G, (a1, z_enc), (a1, noise["z"]))
    with frozen(nets.D, nets.D2):
        g_gan = w.gan * gan_loss(nets.D(fake_enc), True, o.gan_mode, o.impl)
        g_gan2 = w.gan2 * gan_loss(nets.D2(fake_rand), True, o.gan_mode, o.impl)
    g_l1 = w.l1 * l1(fake_enc, b1)
    with frozen(nets.E):  # the latent loss reaches G only
        mu2, _ = nets.E(fake_rand)
    z_l1 = w.z * l1(mu2, noise["z"])
    loss = g_gan + g_gan2 + g_l1 + kl + z_l1
    metrics = {"G_GAN": g_gan, "G_GAN2": g_gan2, "G_L1": g_l1, "kl": kl, "z_L1": z_l1}
    return GEResult(loss, metrics, [("D", fake_enc, b1), ("D2", fake_rand, b2)])


def _pix2pix(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], o: Objective) -> GEResult:
    w = o.weights
    fake = nets.G(a, noise["z"])
    with frozen(nets.D):
        g_gan = w.gan * gan_loss(nets.D(fake), True, o.gan_mode, o.impl)
    g_l1 = w.l1 * l1(fake, b)
    return GEResult(g_gan + g_l1, {"G_GAN": g_gan, "G_L1": g_l1}, [("D", fake, b)])


def _cae(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], o: Objective) -> GEResult:
    w = o.weights
    mu, _ = nets.E(b)
    fake = nets.G(a, mu)
    with frozen(nets.D):
        g_gan = w.gan * gan_loss(nets.D(fake), True, o.gan_mode, o.impl)
    g_l1 = w.l1 * l1(fake, b)
    return GEResult(g_gan + g_l1, {"G_GAN": g_gan, "G_L1": g_l1}, [("D", fake, b)])


def _cvae(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], o: Objective) -> GEResult:
    w = o.weights
    mu, logvar = nets.E(b)
    z, kl = o.encode(mu, logvar, noise["eps"])
    fake = nets.G(a, z)
    with frozen(nets.D):
        g_gan = w.gan * gan_loss(nets.D(fake), True, o.gan_mode, o.impl)
    g_l1 = w.l1 * l1(fake, b)
    return GEResult(g_gan + g_l1 + kl, {"G_GAN": g_gan, "G_L1": g_l1, "kl": kl}, [("D", fake, b)])


def _clr(nets: Nets, a: Tensor, b: Tensor, noise: dict[str, Tensor], o: Objective) -> GEResult:
    w = o.weights
    fake = nets.G(a, noise["z"])
    with frozen(nets.D):
        g_gan = w.gan2 * gan_loss(nets.D(fake), True, o.gan_mode, o.impl)
    mu2, _ = nets.E(fake)
    z_l1 = w.z * l1(mu2, noise["z"])
    return GEResult(g_gan + z_l1, {"G_GAN": g_gan, "z_L1": z_l1}, [("D", fake, b)])


MODELS: dict[str, ModelSpec] = {
    "bicycle": ModelSpec("bicycle", True, ("D", "D2"), lambda n: {"eps": n // 2, "z": n // 2}, _bicycle,
                         "BicycleGAN: cVAE-GAN (B->z->B) + cLR-GAN (z->B->z), two discriminators", variational=True),
    "pix2pix": ModelSpec("pix2pix", False, ("D",), lambda n: {"z": n}, _pix2pix,
                         "pix2pix + noise: G(A, z) with GAN + L1; no encoder"),
    "cae-gan": ModelSpec("cae-gan", True, ("D",), lambda n: {}, _cae,
                         "conditional autoencoder GAN: z = mu(E(B)), GAN + L1, no KL"),
    "cvae-gan": ModelSpec("cvae-gan", True, ("D",), lambda n: {"eps": n}, _cvae,
                          "conditional VAE-GAN: the B->z->B cycle alone (GAN + L1 + KL)", variational=True),
    "clr-gan": ModelSpec("clr-gan", True, ("D",), lambda n: {"z": n}, _clr,
                         "conditional latent regressor GAN: the z->B->z cycle alone (GAN + latent L1)"),
}
