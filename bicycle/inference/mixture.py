"""Gaussian mixtures over latent codes: sampling, densities and the EM fit. Imports only torch and bicycle's errors.

The mixture (:func:`fit_gmm`), fitted by EM in float64 on the CPU:
  * components: ``k`` (default :data:`COMPONENTS` = 10), lowered to ``M // (2 * nz)`` (at least 1) when
    there are fewer than ``2 * nz`` points per component, so each full covariance has data behind it;
  * full covariances, each with a ridge of ``RIDGE`` (1e-4) times the data's mean per-dimension variance
    (plus 1e-10) added to its diagonal: never singular, even for dimensions the encoder left unused;
  * init: k-means++ seeding from a ``torch.Generator`` seeded with ``seed`` (the first centre a uniformly
    drawn point, each next one drawn with probability proportional to the squared distance to the
    nearest centre), then hard assignment to the nearest centre for the first M-step;
  * at most ``iters`` (100) EM iterations, stopping earlier when the mean log-likelihood per point
    improves by less than ``tol`` (1e-4 nats);
  * at most ``max_points`` (20,000) points: above that a subset drawn by ``torch.randperm`` from the same
    seeded generator (sorted, deterministic). Memory is O(points x K x nz) float64 (12.8 MB at the caps).
Same data, ``k`` and ``seed``: the same mixture, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bicycle.errors import ConfigError

COMPONENTS = 10
ITERS = 100
TOL = 1e-4
MAX_POINTS = 20_000
RIDGE = 1e-4
LLOYD_ITERS = 10


@dataclass
class GaussianMixture:
    """weights [K] (sum 1), means [K, nz], covariances [K, nz, nz]; float64 on the CPU."""

    weights: Tensor
    means: Tensor
    covariances: Tensor

    @property
    def k(self) -> int:
        return int(self.weights.shape[0])

    @property
    def nz(self) -> int:
        return int(self.means.shape[1])

    def _chol(self) -> Tensor:
        return _safe_cholesky(self.covariances, 1e-12)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """[n, nz] float32 codes: a component per code by inverse CDF of one uniform (``torch.rand``), then
        mean + temperature * L eps (L L^T the covariance, eps ~ N(0, I)): temperature t scales the
        covariances by t^2. Draws n uniforms then n x nz normals from ``generator``, nothing else."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        eps = torch.randn(n, self.nz, generator=generator, dtype=torch.float64)
        cdf = torch.cumsum(self.weights, 0)
        comp = torch.searchsorted(cdf / cdf[-1], u, right=True).clamp_(max=self.k - 1)
        z = self.means[comp] + temperature * torch.einsum("nij,nj->ni", self._chol()[comp], eps)
        return z.float()

    def component_log_prob(self, x: Tensor) -> Tensor:
        """[M, K]: log w_k + log N(x | mean_k, cov_k)."""
        return _component_log_prob(x.double().cpu(), self.weights, self.means, self._chol())

    def log_prob(self, x: Tensor) -> Tensor:
        """[M] float64: the mixture's log density at each row of x [M, nz]."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)


def _component_log_prob(x: Tensor, weights: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    d = x.shape[1]
    eye = torch.eye(d, dtype=torch.float64).expand_as(chol)
    inv = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)  # L^-T, [K, d, d]
    y = (x[None] - means[:, None]) @ inv  # [K, M, d]: whitened offsets
    maha = (y * y).sum(2)  # [K, M]
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)  # [K]
    return (torch.log(weights) - 0.5 * (d * math.log(2 * math.pi) + logdet))[None] - 0.5 * maha.T


def _safe_cholesky(cov: Tensor, ridge: float) -> Tensor:
    """Cholesky factors of [K, d, d]; a factor that fails gets 10x more ridge until it succeeds."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    extra = ridge
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(cov)
        if not bool((info > 0).any()):
            return chol
        cov = cov + (info > 0).to(cov.dtype)[:, None, None] * extra * eye
        extra *= 10
    return torch.linalg.cholesky(cov)


def effective_components(m: int, nz: int, k: int) -> int:
    """K actually fitted: ``k``, lowered to ``m // (2 * nz)`` (at least 1) for few points."""
    return max(1, min(k, m // (2 * nz), m))


def subset_indices(m: int, max_points: int, seed: int) -> list[int]:
    """All of range(m), or ``max_points`` of them drawn by a seeded ``torch.randperm`` (sorted)."""
    if m <= max_points:
        return list(range(m))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(m, generator=g)[:max_points].tolist())


def _kmeans_pp(x: Tensor, k: int, g: torch.Generator, lloyd: int = LLOYD_ITERS) -> Tensor:
    """Greedy k-means++ (2 + ln k candidates per centre, the one lowering the potential most is kept),
    then ``lloyd`` Lloyd iterations: the centres that start EM."""
    m = x.shape[0]
    trials = 2 + int(math.log(k))
    centres = [int(torch.randint(m, (1,), generator=g))]
    d2 = ((x - x[centres[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than components: any point
            cand = torch.randint(m, (trials,), generator=g)
        else:
            cand = torch.multinomial(d2 / total, trials, replacement=True, generator=g)
        new = torch.minimum(d2[None], torch.cdist(x[cand], x) ** 2)  # [trials, M]
        best = int(new.sum(1).argmin())
        centres.append(int(cand[best]))
        d2 = new[best]
    c = x[centres].clone()
    for _ in range(lloyd):
        nearest = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(nearest, minlength=k).double()
        sums = torch.zeros_like(c).index_add_(0, nearest, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
    return c


def _m_step(x: Tensor, resp: Tensor, reg: float) -> tuple[Tensor, Tensor, Tensor]:
    d = x.shape[1]
    nk = resp.sum(0) + 10 * torch.finfo(torch.float64).eps
    weights = nk / nk.sum()
    means = (resp.T @ x) / nk[:, None]
    diff = x[None] - means[:, None]  # [K, M, d]
    covs = (resp.T[:, :, None] * diff).transpose(1, 2) @ diff / nk[:, None, None]
    covs = covs + reg * torch.eye(d, dtype=torch.float64)
    return weights, means, 0.5 * (covs + covs.transpose(1, 2))


@dataclass
class FitResult:
    mixture: GaussianMixture
    log_likelihood: float  # mean per point, nats
    iterations: int
    converged: bool
    points: int


def fit_gmm(x: Tensor, k: int = COMPONENTS, seed: int = 0, iters: int = ITERS, tol: float = TOL, *,
            max_points: int = MAX_POINTS, ridge: float = RIDGE) -> GaussianMixture:
    """A full-covariance Gaussian mixture fitted by EM to x [M, nz] (see the module docstring)."""
    return fit_gmm_report(x, k, seed, iters, tol, max_points=max_points, ridge=ridge).mixture


def fit_gmm_report(x: Tensor, k: int = COMPONENTS, seed: int = 0, iters: int = ITERS, tol: float = TOL, *,
                   max_points: int = MAX_POINTS, ridge: float = RIDGE) -> FitResult:
    """:func:`fit_gmm` with the mean log-likelihood, the iterations run and whether ``tol`` was reached."""
    if x.dim() != 2 or x.shape[0] < 1:
        raise ConfigError(f"fit_gmm needs points [M, nz] with M >= 1, got {list(x.shape)}")
    if k < 1 or iters < 1 or max_points < 1:
        raise ConfigError(f"fit_gmm: k, iters and max_points must be at least 1 (got {k}, {iters}, {max_points})")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("fit_gmm: the points hold NaN or inf")
    g = torch.Generator().manual_seed(seed)
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=g)[:max_points].sort().values]
    m, d = x.shape
    k = effective_components(m, d, k)
    reg = ridge * float(x.var(0, unbiased=False).mean()) + 1e-10
    centres = _kmeans_pp(x, k, g)
    nearest = torch.cdist(x, centres).argmin(1)
    resp = torch.nn.functional.one_hot(nearest, k).double()
    weights, means, covs = _m_step(x, resp, reg)
    prev, ll, converged, it = -math.inf, -math.inf, False, 0
    for it in range(1, iters + 1):
        chol = _safe_cholesky(covs, reg)
        logp = _component_log_prob(x, weights, means, chol)
        norm = torch.logsumexp(logp, 1, keepdim=True)
        ll = float(norm.mean())
        if ll - prev < tol and it > 1:
            converged = True
            break
        prev = ll
        resp = torch.exp(logp - norm)
        weights, means, covs = _m_step(x, resp, reg)
    chol = _safe_cholesky(covs, reg)
    covs = chol @ chol.transpose(1, 2)  # what sampling and log_prob factor (any ridge added above included)
    mix = GaussianMixture(weights.contiguous(), means.contiguous(), covs.contiguous())
    return FitResult(mix, float(mix.log_prob(x).mean()), it, converged, m)
