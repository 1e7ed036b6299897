"""``bicycle fit-posterior``: a thin layer over :func:`bicycle.inference.posterior.fit_posterior`."""
from __future__ import annotations

from pathlib import Path

import click

from bicycle.commands.reporting import reports_errors

from bicycle.inference.posterior import AGGREGATE_POINTS, MAX_POINTS


@click.command("fit-posterior")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--components", "-k", type=int, default=None,
              help="fit a mixture of this many Gaussians to the codes' means by EM instead of keeping the exact "
                   "aggregate posterior (fewer when there are under 2 * nz points per component)")
@click.option("--seed", type=int, default=0, show_default=True, help="k-means++ init and the subset of points")
@click.option("--device", default="auto", show_default=True, help="where E encodes (the fit runs on the CPU)")
@click.option("--points", type=int, default=None,
              help=f"at most this many training images encoded, a seeded subset above it (default: {AGGREGATE_POINTS}; "
                   f"{MAX_POINTS} with --components)")
@reports_errors
def fit_posterior(run: Path, components: int | None, seed: int, device: str, points: int | None) -> None:
    """Encode RUN's training split (RUN: a run dir, its newest checkpoint; or one of its checkpoint files) and
    write RUN/posterior.safetensors, what `bicycle sample/eval --z-source auto|posterior` draw z from: the
    aggregate posterior, each image's N(mu, sigma^2) from the encoder, or with --components a Gaussian
    mixture fitted to the means."""
    from bicycle.inference.posterior import fit_posterior as fit

    fit(run, components=components, seed=seed, device=device, max_points=points, echo=click.echo)
