"""Sampling z from the aggregate posterior (what the encoder makes of the training set).

Codes drawn from the prior N(0, I) can land where no encoded ground truth ever put the generator. The
aggregate posterior q(z) = 1/M SUM_i N(mu_i, diag(sigma_i^2)), (mu_i, log sigma_i^2) = E(B_i) over M training
ground truths, is the density of the codes G was trained on in the encoded branch; sampling it (``--z-source
posterior``, and ``auto`` when the run has one) keeps z on that support. It is exact, not estimated: no
clustering can merge two modes' codes into one component and draw codes between them, and when the encoder
has collapsed (every sigma_i near 1, every mu_i near 0) it is the prior, so outputs still vary with z. A
K-component Gaussian mixture fitted by EM to the means (ex-post density estimation, Ghosh et al. 2020) is
the alternative (``bicycle fit-posterior --components K``): smaller, smoother, blind to sigma_i.

The mixture: :mod:`bicycle.inference.mixture`.

Storage: ``RUN/posterior.safetensors`` (format ``bicycle-posterior/1``): ``weights`` [K], ``means`` [K, nz],
``covariances`` [K, nz, nz] (float64), with the checkpoint file and step it was fitted for, K, the points
used, the seed and the kind (``aggregate`` or ``gmm``) in its metadata. It is not part of the checkpoint;
loading it for another step is an error saying how to refit (:func:`load_posterior`). Exported weights
(``bicycle export --out``) carry the run's current mixture as ``posterior.weights`` / ``posterior.means`` /
``posterior.covariances`` (:func:`embedded_tensors`), so ``--z-source posterior`` works from the one file.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from bicycle.errors import BicycleError, CheckpointError, ConfigError
from bicycle.inference.mixture import (COMPONENTS, ITERS, MAX_POINTS, RIDGE, TOL, FitResult, GaussianMixture,  # noqa: F401
                                       effective_components, fit_gmm, fit_gmm_report, subset_indices)

FORMAT = "bicycle-posterior/1"
FILENAME = "posterior.safetensors"
Z_SOURCES = ("auto", "prior", "posterior")
ENCODE_BATCH = 64
# The fit at each checkpoint of ``bicycle train``: the aggregate posterior of this many training images (a
# seeded subset above it); ``bicycle fit-posterior`` takes up to AGGREGATE_POINTS.
AUTO_POINTS = 1_000
AGGREGATE_POINTS = 5_000  # 5,000 x nz^2 float64 covariances: 2.6 MB at nz 8


# -- storage ------------------------------------------------------------------------------------------


def posterior_path(run_dir: Path) -> Path:
    return Path(run_dir) / FILENAME


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run dir of a checkpoint file: RUN for RUN/checkpoints/step_*.safetensors, else its folder."""
    p = Path(checkpoint_path)
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def save_posterior(path: Path, mixture: GaussianMixture, checkpoint: str, step: int, points: int, seed: int,
                   log_likelihood: float | None = None, kind: str = "gmm") -> Path:
    """Write the mixture atomically (safetensors, format ``bicycle-posterior/1``)."""
    from bicycle.io import atomic_write_bytes, writing

    tensors = {"weights": mixture.weights.double().contiguous(), "means": mixture.means.double().contiguous(),
               "covariances": mixture.covariances.double().contiguous()}
    meta = {"format": FORMAT, "checkpoint": checkpoint, "step": str(step), "components": str(mixture.k),
            "points": str(points), "seed": str(seed), "nz": str(mixture.nz), "covariance": "full", "kind": kind}
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
        raise ConfigError(f"--z-source must be auto, prior or posterior, got {z_source!r}")
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
def encode_posteriors(encoder: torch.nn.Module, dataset, indices: list[int], device,
                      batch: int = ENCODE_BATCH) -> tuple[Tensor, Tensor]:
    """(mu, logvar) of E(B), each [len(indices), nz] float64 on the CPU, for the ground truths B of
    ``dataset[indices]`` (E in eval mode while encoding; its previous mode restored)."""
    was_training = encoder.training
    encoder.eval()
    try:
        mus, logvars = [], []
        for i in range(0, len(indices), batch):
            _, b = dataset.get_batch(indices[i:i + batch])
            mu, logvar = encoder(b.to(device))
            mus.append(mu.detach().double().cpu())
            logvars.append(logvar.detach().double().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(mus), torch.cat(logvars)


def aggregate_mixture(mu: Tensor, logvar: Tensor) -> GaussianMixture:
    """mu, logvar [M, nz] -> the aggregate posterior 1/M SUM_i N(mu_i, diag(exp(logvar_i))), float64."""
    if mu.dim() != 2 or mu.shape != logvar.shape or mu.shape[0] < 1:
        raise ConfigError(f"aggregate_mixture needs mu and logvar [M, nz] with M >= 1, got {list(mu.shape)} and "
                          f"{list(logvar.shape)}")
    if not (bool(torch.isfinite(mu).all()) and bool(torch.isfinite(logvar).all())):
        raise ConfigError("the encoder gave NaN or inf codes: there is no posterior to fit")
    m = mu.shape[0]
    var = logvar.double().exp().clamp_min(1e-10)
    return GaussianMixture(torch.full((m,), 1.0 / m, dtype=torch.float64), mu.double().clone(), torch.diag_embed(var))


def fit_for_nets(encoder: torch.nn.Module, dataset, device, run_dir: Path, checkpoint: Path, step: int, *,
                 components: int | None = None, seed: int = 0, max_points: int | None = None, iters: int = ITERS,
                 tol: float = TOL) -> dict:
    """Encode (at most ``max_points``) training ground truths and write RUN/posterior.safetensors: their aggregate
    posterior, or with ``components`` K a K-component mixture fitted by EM to their means. The report holds the
    mixture written (``"mixture"``)."""
    t0 = time.perf_counter()
    if len(dataset) < 1:
        raise CheckpointError("fit-posterior: the training split is empty")
    if max_points is None:
        max_points = AGGREGATE_POINTS if components is None else MAX_POINTS
    indices = subset_indices(len(dataset), max_points, seed)
    mu, logvar = encode_posteriors(encoder, dataset, indices, device)
    if components is None:
        mixture, points, log_likelihood, iterations, converged = aggregate_mixture(mu, logvar), len(indices), None, 0, True
    else:
        fit = fit_gmm_report(mu, components, seed, iters, tol, max_points=max_points)
        mixture, points, log_likelihood = fit.mixture, fit.points, fit.log_likelihood
        iterations, converged = fit.iterations, fit.converged
    kind = "aggregate" if components is None else "gmm"
    path = save_posterior(posterior_path(run_dir), mixture, Path(checkpoint).name, step, points, seed, log_likelihood,
                          kind)
    return {"path": str(path), "kind": kind, "components": mixture.k, "points": points,
            "log_likelihood": log_likelihood, "iterations": iterations, "converged": converged,
            "mean_sigma": float(logvar.mul(0.5).exp().mean()), "step": step, "checkpoint": str(checkpoint),
            "seconds": time.perf_counter() - t0, "mixture": mixture}


def fit_at_checkpoint(encoder: torch.nn.Module | None, dataset, device, run_dir: Path, checkpoint: Path, step: int,
                      seed: int, echo: Callable[[str], None]) -> dict | None:
    """Each checkpoint of ``bicycle train``: the aggregate posterior of AUTO_POINTS training images for it. No
    encoder (pix2pix) or no checkpoint file: nothing; a failure is one line through ``echo``, never the end of a
    run."""
    if encoder is None or not Path(checkpoint).is_file():
        return None
    try:
        r = fit_for_nets(encoder, dataset, device, run_dir, checkpoint, step, seed=seed, max_points=AUTO_POINTS)
    except (BicycleError, RuntimeError, ValueError) as exc:  # torch.linalg errors are RuntimeErrors
        echo(f"posterior: not fitted ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
             f"fit it with: bicycle fit-posterior {run_dir}")
        return None
    return r


def summary_line(r: dict) -> str:
    where = f"{r['points']} encoded ground truths (step {r['step']})"
    if r.get("kind", "gmm") == "aggregate":
        return (f"posterior: the aggregate posterior of {where}, mean sigma {r['mean_sigma']:.3f} (1: the prior's), "
                f"{r['seconds']:.1f} s; wrote {r['path']}")
    return (f"posterior: {r['components']} components fitted to {where}, mean log-likelihood "
            f"{r['log_likelihood']:.3f} nats/point, {r['iterations']} EM iterations"
            f"{'' if r['converged'] else ' (iteration cap)'}, {r['seconds']:.1f} s; wrote {r['path']}")


def fit_posterior(run: str | Path, components: int | None = None, seed: int = 0, device: str = "auto",
                  max_points: int | None = None, iters: int = ITERS, tol: float = TOL,
                  echo: Callable[[str], None] = print) -> dict:
    """``bicycle fit-posterior RUN``: the run's newest checkpoint (or the checkpoint file given), its
    dataset's train split, encoded; writes RUN/posterior.safetensors (:func:`fit_for_nets`)."""
    from bicycle.build import build_dataset
    from bicycle.inference.loading import load_model
    from bicycle.plugins import get_plugins

    for name, value in (("--components", components), ("--points", max_points)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
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
