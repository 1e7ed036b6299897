"""One BicycleGAN iteration written the way the original implementation (junyanz/BicycleGAN) writes
it: plain modules and plain-PyTorch losses, two backward calls, ``requires_grad`` toggling to freeze
E for the latent loss and D, D2 for the G/E update, z drawn on the host. It is the yardstick that
``bicycle bench --step`` times the fast path against, and the tests pin
:func:`bicycle.train.step.train_step` to it (same weights and noise: same losses and updates).
"""
from __future__ import annotations

import torch
from torch import Tensor

from bicycle.config import LossWeights
from bicycle.nets import Nets


def _set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def _lsgan(preds, target: float) -> Tensor:
    return sum(torch.mean((p - target) ** 2) for p in preds)


def reference_step(nets: Nets, opts: dict[str, torch.optim.Optimizer], a: Tensor, b: Tensor, nz: int,
                   w: LossWeights) -> dict[str, Tensor]:
    """a: [N, Ca, S, S], b: [N, Cb, S, S] (N even). Steps E, G, then D, D2; returns the 0-dim losses."""
    G, E, D, D2 = nets.G, nets.E, nets.D, nets.D2
    half = a.shape[0] // 2
    a1, b1, b2 = a[:half], b[:half], b[half:]
    device = a.device
    # forward (the original draws z on the host and moves it)
    mu, logvar = E(b1)
    eps = torch.randn(half, nz).to(device)
    z_enc = eps * torch.exp(0.5 * logvar) + mu
    z_rand = torch.randn(half, nz).to(device)
    fake_enc = G(a1, z_enc)
    fake_rand = G(a1, z_rand)
    # update G and E
    _set_requires_grad([D, D2], False)
    opts["E"].zero_grad()
    opts["G"].zero_grad()
    loss_gan = w.gan * _lsgan(D(fake_enc), 1.0)
    loss_gan2 = w.gan2 * _lsgan(D2(fake_rand), 1.0)
    loss_kl = torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * (-0.5 * w.kl)
    loss_l1 = w.l1 * torch.mean(torch.abs(fake_enc - b1))
    (loss_gan + loss_gan2 + loss_l1 + loss_kl).backward(retain_graph=True)
    _set_requires_grad([E], False)  # G alone
    mu2, _ = E(fake_rand)
    loss_z = w.z * torch.mean(torch.abs(mu2 - z_rand))
    loss_z.backward()
    _set_requires_grad([E], True)
    opts["E"].step()
    opts["G"].step()
    # update D and D2
    _set_requires_grad([D, D2], True)
    out = {"G_GAN": loss_gan.detach(), "G_GAN2": loss_gan2.detach(), "G_L1": loss_l1.detach(), "kl": loss_kl.detach(),
           "z_L1": loss_z.detach()}
    for name, net, fake, real in (("D", D, fake_enc, b1), ("D2", D2, fake_rand, b2)):
        opts[name].zero_grad()
        loss_d = _lsgan(net(fake.detach()), 0.0) + _lsgan(net(real), 1.0)
        loss_d.backward()
        opts[name].step()
        out[name] = loss_d.detach()
    return out
