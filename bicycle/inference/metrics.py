"""Realism and diversity measures (``bicycle eval``), as pure functions over tensors.

Protocol: M inputs, N random-z outputs each (z ~ N(0, I)), plus the encoded output G(A, mu(E(B)))
where the ground truth B is known. Pairwise diversity uses the N - 1 consecutive pairs
(s_0, s_1), (s_1, s_2), ... of each input's samples (19 pairs for N = 20, the paper's count).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

PROTOCOL_VERSION = "bicycle-eval/1"


def ideal_distinct_modes(probs: Tensor, n: int) -> Tensor:
    """probs: [M, K] true p(mode | A) -> [M]: expected distinct modes in n independent draws,
    sum_k 1 - (1 - p_k)^n."""
    return (1 - (1 - probs).pow(n)).sum(-1)


def jsd_base2(p: Tensor, q: Tensor) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two histograms (normalised here)."""
    p = p.double() / p.sum().clamp_min(1e-300)
    q = q.double() / q.sum().clamp_min(1e-300)
    m = (p + q) / 2

    def kl(a: Tensor, b: Tensor) -> Tensor:
        mask = a > 0
        return (a[mask] * (a[mask] / b[mask]).log2()).sum()

    return float((kl(p, m) + kl(q, m)) / 2)


def consecutive_pair_l1(outs: Tensor) -> Tensor:
    """outs: [M, N, C, H, W] -> [M]: mean over the N-1 consecutive pairs of mean |s_i - s_{i+1}|."""
    if outs.shape[1] < 2:
        return torch.full((outs.shape[0],), math.nan)
    return (outs[:, 1:] - outs[:, :-1]).abs().flatten(2).mean(-1).mean(-1)


def z_sensitivity(outs: Tensor) -> float:
    """outs: [M, N, C, H, W] (M >= 2, N >= 2): mean distance between outputs of one input for
    different z, over mean distance between outputs of different inputs for the same z.
    Near 0: G ignores z. Near 1 or above: z changes the output as much as the input does."""
    across_z = consecutive_pair_l1(outs).mean()
    across_inputs = (outs[1:] - outs[:-1]).abs().flatten(2).mean(-1).mean()
    return float(across_z / across_inputs.clamp_min(1e-12))


def mode_statistics(valid: Tensor, modes: Tensor, probs: Tensor) -> dict[str, float]:
    """valid, modes: [M, N] (oracle verdicts on random-z samples); probs: [M, K] true p(mode | A)."""
    m, n = valid.shape
    k = probs.shape[1]
    distinct = torch.tensor([len(set(modes[i][valid[i]].tolist())) for i in range(m)], dtype=torch.float64)
    ideal = ideal_distinct_modes(probs.double(), n)
    hist = torch.bincount(modes[valid].clamp(0, k - 1), minlength=k).double()
    true = probs.double().sum(0)
    return {
        "valid_rate": float(valid.double().mean()),
        "modes_per_input": float(distinct.mean()),
        "ideal_modes_per_input": float(ideal.mean()),
        "modes_fraction_of_ideal": float(distinct.mean() / ideal.mean()),
        "mode_jsd": jsd_base2(hist, true) if hist.sum() > 0 else 1.0,
    }


def prior_coverage(mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
    """min(1, q(z) / p(z)) at each z: how well the encoder's aggregate posterior q covers the prior there.

    mu, logvar: [M, nz], the posteriors of M ground truths; q = mean_i N(mu_i, diag(exp(logvar_i)));
    p = N(0, I); z: [K, nz], drawn from p. Returns [K] in [0, 1]. Its mean is a Monte-Carlo estimate of
    the overlap 1 - TV(p, q) (integral of min(p, q)), with q known only through M encodings (so it reads
    low where M is small next to the number of modes). Random z where it is near 0 are codes that G met in
    training only through the z -> B -> z cycle, never as an encoded ground truth.
    """
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    out = []
    rows = max(1, 2**22 // max(1, mu.numel()))  # z per chunk: the [rows, M, nz] difference stays near 32 MB
    for zc in z.split(rows):
        diff = zc[:, None, :] - mu[None]  # [rows, M, nz]
        log_comp = -0.5 * (diff.square() / logvar.exp()[None] + logvar[None]).sum(-1)  # log N(z; mu_i, var_i) + nz/2 log 2pi
        log_q = torch.logsumexp(log_comp, dim=1) - math.log(mu.shape[0])
        log_p = -0.5 * zc.square().sum(-1)  # the same nz/2 log 2pi left out of both
        out.append((log_q - log_p).clamp(max=0.0).exp().float())
    return torch.cat(out)
