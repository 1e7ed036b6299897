"""Posterior collapse, watched during training: how many latent dimensions E uses, and whether the encoded
output is closer to the ground truth than outputs from random codes.

On the first ``COLLAPSE_INPUTS`` pairs of the val split, at every progress grid:

* per-dimension KL: KL_j = mean over the inputs of -0.5 (1 + logvar_j - mu_j^2 - exp(logvar_j)) (the batch
  mean, as free bits floors it); a dimension is *active* when KL_j > ``ACTIVE_KL`` nats. Variational
  models only (bicycle, cvae-gan): other encoders are not trained against the prior.
* encoded vs random: L1(G(A, mu(E(B))), B) against the mean L1(G(A, z), B) over ``RANDOM_CODES`` random z.
  When the encoded output is not clearly closer (ratio >= ``ENCODED_RATIO``), G ignores E's code.

Either finding, from ``HEALTH_AFTER`` of the run on (or from the end of lambda_KL's warm-up, if later), gives one
warning with the remedies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bicycle.nets import Nets

COLLAPSE_INPUTS = 32
RANDOM_CODES = 2
ACTIVE_KL = 0.05  # nats; a dimension below carries (almost) nothing about B
MIN_ACTIVE = 1
ENCODED_RATIO = 0.95
REMEDY = ("remedies: --kl-free-bits 0.1 (a KL floor per dimension), a smaller --lambda-kl, or --kl-warmup 0.3 "
          "(docs/training.md: \"Posterior collapse\")")


@dataclass(frozen=True)
class CollapseCheck:
    """``kl_per_dim`` [nz] (None for non-variational models), ``active`` dims, and the encoded / random L1."""

    kl_per_dim: list[float] | None
    active: int | None
    encoded_l1: float
    random_l1: float

    @property
    def ratio(self) -> float:
        return self.encoded_l1 / max(self.random_l1, 1e-12)

    def problem(self) -> str | None:
        found = []
        if self.active is not None and self.active < MIN_ACTIVE:
            found.append(f"{self.active} of {len(self.kl_per_dim or [])} latent dimensions carry information "
                         f"(batch-mean KL > {ACTIVE_KL} nats)")
        if self.ratio >= ENCODED_RATIO:
            found.append(f"the encoded output is no closer to the ground truth than random-z outputs "
                         f"(L1 {self.encoded_l1:.3f} vs {self.random_l1:.3f})")
        return "; ".join(found) or None


def per_dim_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """mu, logvar: [N, nz] -> [nz], each dimension's KL to N(0, 1), averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(0)


@torch.no_grad()
def measure(nets: Nets, a: Tensor, b: Tensor, z: Tensor, variational: bool) -> CollapseCheck:
    """a: [N, Ca, S, S], b: [N, Cb, S, S], z: [N, K, nz], on the networks' device; ``nets`` in eval mode."""
    assert nets.E is not None
    mu, logvar = nets.E(b)
    enc_l1 = float((nets.G(a, mu) - b).abs().mean())
    n, k, nz = z.shape
    a_rep = a.unsqueeze(1).expand(n, k, *a.shape[1:]).reshape(n * k, *a.shape[1:])
    b_rep = b.unsqueeze(1).expand(n, k, *b.shape[1:]).reshape(n * k, *b.shape[1:])
    rand_l1 = float((nets.G(a_rep, z.reshape(n * k, nz)) - b_rep).abs().mean())
    if not variational:
        return CollapseCheck(None, None, enc_l1, rand_l1)
    kl = per_dim_kl(mu.float(), logvar.float()).cpu()
    return CollapseCheck([round(float(v), 4) for v in kl], int((kl > ACTIVE_KL).sum()), enc_l1, rand_l1)


class CollapseMonitor:
    """The check of :func:`measure` on fixed val pairs and codes; ``history`` for the run's summary."""

    def __init__(self, val, nz: int, seed: int, total_steps: int, variational: bool, health_after: float) -> None:
        n = min(COLLAPSE_INPUTS, len(val))
        self.a, self.b = val.get_batch(list(range(n)))
        self.z = torch.randn(n, RANDOM_CODES, nz, generator=torch.Generator().manual_seed(seed + 3))
        self.variational, self.after = variational, health_after * total_steps
        self.history: list[dict] = []
        self.warned = False

    def check(self, nets: Nets, step: int, device: torch.device) -> str | None:
        """Measure (``nets`` in eval mode); the one-time warning, or None."""
        c = measure(nets, self.a.to(device), self.b.to(device), self.z.to(device), self.variational)
        self.history.append({"step": step, "active_dims": c.active, "kl_per_dim": c.kl_per_dim,
                             "encoded_l1": round(c.encoded_l1, 4), "random_l1": round(c.random_l1, 4)})
        problem = c.problem()
        if problem is None or step < self.after or self.warned:
            return None
        self.warned = True
        return f"warning: posterior collapse at step {step}: {problem}; {REMEDY}"
