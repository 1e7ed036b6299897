"""Same seed, a few optimiser steps of a tiny VAE-GAN-shaped model: per-step losses agree across impls."""
from __future__ import annotations

import pytest
import torch

from conftest_ops import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()

from bicycle import ops  # noqa: E402


def _losses(impl: str, steps: int = 5) -> list[float]:
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(12, 2 * 3), torch.nn.Linear(3, 2 * 16 + 2 * 4)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
    x = torch.randn(2, 12)
    out = []
    for _ in range(steps):
        mu, logvar = enc(x).chunk(2, dim=1)
        eps = torch.randn_like(mu)  # drawn by torch, the same for every impl
        z, kl = ops.reparam_kl(mu, logvar, eps, 0.01, impl=impl)
        h = dec(z)
        fake = [h[:, :16].reshape(2, 1, 4, 4), h[:, 16:20].reshape(2, 1, 2, 2)]
        real = [h[:, 20:36].reshape(2, 1, 4, 4), h[:, 36:].reshape(2, 1, 2, 2)]
        loss = ops.lsgan(fake, 1.0, impl=impl) + ops.lsgan_d(fake, real, impl=impl) + kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_per_step_losses_match_reference(impl):
    if ops.unavailable_reason(impl, "cpu", "reparam_kl"):
        pytest.skip(ops.unavailable_reason(impl, "cpu", "reparam_kl"))
    ref = _losses("ref")
    assert len(set(ref)) == len(ref)  # the parameters do move
    assert _losses(impl) == pytest.approx(ref, rel=1e-5, abs=1e-6)
