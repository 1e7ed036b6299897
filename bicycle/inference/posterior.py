"""Sampling z from the aggregate posterior (ex-post density estimation, Ghosh et al. 2020).

Codes drawn from the prior N(0, I) can land where no encoded ground truth ever put the generator. A
Gaussian mixture fitted after training to the encoder's means mu(E(B)) over the training set is a
density of the codes G actually saw; sampling it (``--z-source posterior``) keeps z on that support.

The mixture: :mod:`bicycle.inference.mixture`.

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
# The fit at the end of ``bicycle train`` (well under 10 s for the demo preset on a CPU); fit-posterior
# refits with the full caps.
AUTO_POINTS = 1_000
AUTO_ITERS = 30


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


def fit_at_checkpoint(encoder: torch.nn.Module | None, dataset, device, run_dir: Path, checkpoint: Path, step: int,
                      seed: int, echo: Callable[[str], None]) -> dict | None:
    """Each checkpoint of ``bicycle train``: a quick fit (AUTO_POINTS points, AUTO_ITERS iterations) for it. No
    encoder (pix2pix) or no checkpoint file: nothing; a failure is one line through ``echo``, never the end of a
    run."""
    if encoder is None or not Path(checkpoint).is_file():
        return None
    try:
        r = fit_for_nets(encoder, dataset, device, run_dir, checkpoint, step, seed=seed, max_points=AUTO_POINTS,
                         iters=AUTO_ITERS)
    except (BicycleError, RuntimeError, ValueError) as exc:  # torch.linalg errors are RuntimeErrors
        echo(f"posterior: not fitted ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
             f"fit it with: bicycle fit-posterior {run_dir}")
        return None
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
    from bicycle.inference.loading import load_model
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
