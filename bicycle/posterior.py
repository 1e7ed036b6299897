"""Sampling z from the aggregate posterior (ex-post density estimation, Ghosh et al. 2020).

Codes drawn from the prior N(0, I) can land where no encoded ground truth ever put the generator. A
Gaussian mixture fitted after training to the encoder's means mu(E(B)) over the training set is a
density of the codes G actually saw; sampling it (``--z-source posterior``) keeps z on that support.

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

Storage: ``RUN/posterior.safetensors`` (format ``bicycle-posterior/1``): ``weights`` [K], ``means`` [K, nz],
``covariances`` [K, nz, nz] (float64), with the checkpoint file and step it was fitted for, K, the points
used and the seed in its metadata. It is not part of the checkpoint; loading it for another step is an
error saying how to refit (:func:`load_posterior`). Exported weights (``bicycle export --out``) carry the
run's current mixture as ``posterior.weights`` / ``posterior.means`` / ``posterior.covariances``
(:func:`embedded_tensors`), so ``--z-source posterior`` works from the one file.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from bicycle.errors import BicycleError, CheckpointError, ConfigError

FORMAT = "bicycle-posterior/1"
FILENAME = "posterior.safetensors"
COMPONENTS = 10
ITERS = 100
TOL = 1e-4
MAX_POINTS = 20_000
RIDGE = 1e-4
Z_SOURCES = ("prior", "posterior")
ENCODE_BATCH = 64
# The fit at the end of ``bicycle train`` (well under 10 s for the demo preset on a CPU); fit-posterior
# refits with the full caps.
AUTO_POINTS = 1_000
AUTO_ITERS = 30
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


# -- storage ------------------------------------------------------------------------------------------


def posterior_path(run_dir: Path) -> Path:
    return Path(run_dir) / FILENAME


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run dir of a checkpoint file: RUN for RUN/checkpoints/step_*.safetensors, else its folder."""
    p = Path(checkpoint_path)
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def save_posterior(path: Path, mixture: GaussianMixture, checkpoint: str, step: int, points: int, seed: int,
                   log_likelihood: float | None = None) -> Path:
    """Write the mixture atomically (safetensors, format ``bicycle-posterior/1``)."""
    from bicycle.io import atomic_write_bytes, writing

    tensors = {"weights": mixture.weights.double().contiguous(), "means": mixture.means.double().contiguous(),
               "covariances": mixture.covariances.double().contiguous()}
    meta = {"format": FORMAT, "checkpoint": checkpoint, "step": str(step), "components": str(mixture.k),
            "points": str(points), "seed": str(seed), "nz": str(mixture.nz), "covariance": "full"}
    if log_likelihood is not None:
        meta["log_likelihood"] = json.dumps(log_likelihood)
    with writing(path):
        atomic_write_bytes(Path(path), save_bytes(tensors, metadata=meta))
    return Path(path)


def _mixture(tensors: dict[str, Tensor], where: str, refit: str) -> GaussianMixture:
    if not {"weights", "means", "covariances"} <= set(tensors):
        raise CheckpointError(f"{where} has no complete posterior (weights, means, covariances); {refit}")
    w, mu, cov = tensors["weights"].double(), tensors["means"].double(), tensors["covariances"].double()
    k = w.shape[0] if w.dim() == 1 else -1
    ok = (k >= 1 and mu.dim() == 2 and mu.shape[0] == k and tuple(cov.shape) == (k, mu.shape[1], mu.shape[1])
          and all(bool(torch.isfinite(t).all()) for t in (w, mu, cov)) and bool((w > 0).all()))
    if not ok:
        raise CheckpointError(f"posterior {where} is damaged (weights {list(w.shape)}, means {list(mu.shape)}, "
                              f"covariances {list(cov.shape)}, or non-finite values); {refit}")
    return GaussianMixture(w, mu, cov)


def read_posterior(path: Path) -> tuple[GaussianMixture, dict[str, str]]:
    p = Path(path)
    try:
        data = p.read_bytes()
        tensors = load_bytes(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read posterior {p}: {exc}") from exc
    meta = header.get("__metadata__", {}) or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a bicycle posterior (format {meta.get('format')!r}, expected {FORMAT!r})")
    return _mixture(tensors, str(p), f"refit with: bicycle fit-posterior {p.parent}"), meta


EMBEDDED = "posterior."


def embedded_tensors(mixture: GaussianMixture) -> dict[str, Tensor]:
    """The mixture as ``posterior.*`` float64 tensors, for exported weights."""
    return {f"{EMBEDDED}weights": mixture.weights.double().contiguous(),
            f"{EMBEDDED}means": mixture.means.double().contiguous(),
            f"{EMBEDDED}covariances": mixture.covariances.double().contiguous()}


def embedded_posterior(tensors: dict[str, Tensor], path: Path) -> GaussianMixture | None:
    """The mixture exported weights carry, or None when they were exported without one."""
    inner = {k[len(EMBEDDED):]: v for k, v in tensors.items() if k.startswith(EMBEDDED)}
    return _mixture(inner, str(path), "export the run again") if inner else None


def current_posterior(run_dir: Path, step: int, nz: int) -> GaussianMixture | None:
    """The run's posterior when one is fitted for ``step``; None when the run has none. A stale or
    damaged one is an error (saying how to refit)."""
    if not posterior_path(run_dir).is_file():
        return None
    return load_posterior(run_dir, step, nz)


def load_posterior(run_dir: Path, step: int, nz: int, checkpoint: Path | None = None) -> GaussianMixture:
    """RUN/posterior.safetensors, checked to belong to the checkpoint in use (same step, same nz)."""
    run_dir = Path(run_dir)
    path = posterior_path(run_dir)
    refit = f"bicycle fit-posterior {run_dir}"
    if not path.is_file():
        raise CheckpointError(f"--z-source posterior: no posterior fitted for this run ({path} does not exist); "
                              f"fit one with: {refit}")
    mixture, meta = read_posterior(path)
    fitted = meta.get("step", "?")
    if fitted != str(step):
        used = f" ({Path(checkpoint).name})" if checkpoint is not None else ""
        raise CheckpointError(f"{path} is stale: fitted for step {fitted} ({meta.get('checkpoint', '?')}), the checkpoint "
                              f"in use is step {step}{used}; refit with: {refit}")
    if mixture.nz != nz:
        raise CheckpointError(f"{path} has codes of size {mixture.nz}, the model's nz is {nz}; refit with: {refit}")
    return mixture


def posterior_for(checkpoint_path: Path | None, step: int, nz: int, weights_only: bool,
                  embedded: GaussianMixture | None = None) -> GaussianMixture:
    """The posterior of the run a loaded checkpoint belongs to, or the one exported weights carry."""
    if embedded is not None:
        return embedded
    if checkpoint_path is None or weights_only:
        raise CheckpointError(f"--z-source posterior: {checkpoint_path} holds exported weights without a posterior "
                              f"(its run had none fitted when it was exported): fit one with bicycle fit-posterior "
                              f"RUN and export again, or use the run dir")
    return load_posterior(run_dir_of(checkpoint_path), step, nz, checkpoint_path)


def check_z_source(z_source: str, temperature: float) -> None:
    if z_source not in Z_SOURCES:
        raise ConfigError(f"--z-source must be prior or posterior, got {z_source!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--temperature must be a finite number above 0, got {temperature}")


def draw_codes(mixture: GaussianMixture | None, n_inputs: int, n: int, nz: int, seed: int,
               temperature: float = 1.0) -> Tensor:
    """[n_inputs, n, nz] float32 codes from one ``torch.Generator(seed)``: the prior N(0, t^2 I) when
    ``mixture`` is None, else the mixture (input by input, so input i's codes do not depend on how many
    inputs follow it)."""
    g = torch.Generator().manual_seed(seed)
    if mixture is None:
        z = torch.randn(n_inputs, n, nz, generator=g)
        return z if temperature == 1.0 else z * temperature
    if n_inputs == 0:
        return torch.empty(0, n, nz)
    return torch.stack([mixture.sample(n, g, temperature) for _ in range(n_inputs)])


# -- fitting a run -----------------------------------------------------------------------------------


@torch.no_grad()
def encode_means(encoder: torch.nn.Module, dataset, indices: list[int], device, batch: int = ENCODE_BATCH) -> Tensor:
    """mu(E(B)) [len(indices), nz] float64 on the CPU for the ground truths B of ``dataset[indices]``
    (E in eval mode while encoding; its previous mode restored)."""
    was_training = encoder.training
    encoder.eval()
    try:
        parts = []
        for i in range(0, len(indices), batch):
            _, b = dataset.get_batch(indices[i:i + batch])
            parts.append(encoder(b.to(device))[0].detach().double().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(parts)


def fit_for_nets(encoder: torch.nn.Module, dataset, device, run_dir: Path, checkpoint: Path, step: int, *,
                 components: int = COMPONENTS, seed: int = 0, max_points: int = MAX_POINTS, iters: int = ITERS,
                 tol: float = TOL) -> dict:
    """Encode (at most ``max_points``) training ground truths, fit, write RUN/posterior.safetensors."""
    t0 = time.perf_counter()
    if len(dataset) < 1:
        raise CheckpointError("fit-posterior: the training split is empty")
    indices = subset_indices(len(dataset), max_points, seed)
    x = encode_means(encoder, dataset, indices, device)
    fit = fit_gmm_report(x, components, seed, iters, tol, max_points=max_points)
    path = save_posterior(posterior_path(run_dir), fit.mixture, Path(checkpoint).name, step, fit.points, seed,
                          fit.log_likelihood)
    return {"path": str(path), "components": fit.mixture.k, "points": fit.points,
            "log_likelihood": fit.log_likelihood, "iterations": fit.iterations, "converged": fit.converged,
            "step": step, "checkpoint": str(checkpoint), "seconds": time.perf_counter() - t0}


def fit_after_training(encoder: torch.nn.Module | None, dataset, device, run_dir: Path, checkpoint: Path, step: int,
                       seed: int, echo: Callable[[str], None]) -> dict | None:
    """The end of ``bicycle train``: a quick fit (AUTO_POINTS points, AUTO_ITERS iterations) for the final
    checkpoint, one line echoed. No encoder (pix2pix) or no checkpoint file: nothing; a failure is one
    line, never the end of a finished run."""
    if encoder is None or not Path(checkpoint).is_file():
        return None
    try:
        r = fit_for_nets(encoder, dataset, device, run_dir, checkpoint, step, seed=seed, max_points=AUTO_POINTS,
                         iters=AUTO_ITERS)
    except (BicycleError, RuntimeError, ValueError) as exc:  # torch.linalg errors are RuntimeErrors
        echo(f"posterior: not fitted ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
             f"fit it with: bicycle fit-posterior {run_dir}")
        return None
    echo(summary_line(r) + f" (refit on more points: bicycle fit-posterior {run_dir})")
    return r


def summary_line(r: dict) -> str:
    return (f"posterior: {r['components']} components fitted to {r['points']} encoded ground truths (step {r['step']}), "
            f"mean log-likelihood {r['log_likelihood']:.3f} nats/point, {r['iterations']} EM iterations"
            f"{'' if r['converged'] else ' (iteration cap)'}, {r['seconds']:.1f} s; wrote {r['path']}")


def fit_posterior(run: str | Path, components: int = COMPONENTS, seed: int = 0, device: str = "auto",
                  max_points: int = MAX_POINTS, iters: int = ITERS, tol: float = TOL,
                  echo: Callable[[str], None] = print) -> dict:
    """``bicycle fit-posterior RUN``: the run's newest checkpoint (or the checkpoint file given), its
    dataset's train split, encoded and fitted; writes RUN/posterior.safetensors."""
    from bicycle.build import build_dataset
    from bicycle.loading import load_model
    from bicycle.plugins import get_plugins

    if components < 1 or max_points < 1:
        raise ConfigError(f"--components and --points must be at least 1 (got {components}, {max_points})")
    from bicycle.arguments import check_seed
    check_seed(seed, "--seed")
    ckpt, nets, dev = load_model(run, device)
    if ckpt.weights_only:
        raise CheckpointError(f"{ckpt.path} holds exported weights, not a run: fit-posterior needs a run dir "
                              f"(its training data and a place for posterior.safetensors)")
    cfg = ckpt.config
    if nets.E is None:
        raise CheckpointError(f"{ckpt.path}: model {cfg.train.model} has no encoder: there is no posterior to fit "
                              f"(use --z-source prior)")
    ds = build_dataset(cfg, get_plugins().registry, "train", channels=(cfg.net.in_channels, cfg.net.out_channels))
    r = fit_for_nets(nets.E, ds, dev, run_dir_of(ckpt.path), ckpt.path, ckpt.step, components=components,
                     seed=seed, max_points=max_points, iters=iters, tol=tol)
    echo(summary_line(r))
    return r
