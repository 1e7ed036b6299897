"""Where a model's random codes come from: a :class:`ZSource`, the prior N(0, I) or a Gaussian mixture with the file
it came from, chosen once from ``prior``, ``posterior`` or ``auto`` (:func:`z_source_for`, the one load path)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from bicycle.errors import CheckpointError
from bicycle.inference.mixture import GaussianMixture
from bicycle.inference.posterior import (check_z_source, current_posterior, draw_codes, posterior_for, posterior_path,
                                         run_dir_of)


@dataclass(frozen=True)
class ZSource:
    """The prior (``mixture`` None) or the aggregate posterior read from ``origin``; ``temperature`` scales the
    codes' spread; ``why``: for ``auto``, why it is the prior."""

    mixture: GaussianMixture | None = None
    origin: Path | None = None
    temperature: float = 1.0
    why: str = ""

    @property
    def name(self) -> str:
        return "prior" if self.mixture is None else "posterior"

    def describe(self) -> str:
        if self.mixture is None:
            return "the prior N(0, I) (z-source prior)" + (f" ({self.why})" if self.why else "")
        return f"the aggregate posterior, {self.mixture.k} Gaussians, {self.origin} (z-source posterior)"

    def draw(self, n_inputs: int, n: int, nz: int, seed: int) -> Tensor:
        """[n_inputs, n, nz] codes from ``torch.Generator(seed)`` (see :func:`~bicycle.inference.posterior.draw_codes`)."""
        return draw_codes(self.mixture, n_inputs, n, nz, seed, self.temperature)


PRIOR = ZSource()


def z_source_for(name: str, temperature: float, path: Path | None, step: int, nz: int, weights_only: bool,
                 embedded: GaussianMixture | None = None) -> ZSource:
    """``name`` for the checkpoint at ``path`` (exported weights when ``weights_only``, carrying ``embedded``):
    ``prior``; ``posterior``, the mixture fitted for that checkpoint (an error when there is none); ``auto``, that
    mixture when there is one, else the prior, saying why."""
    check_z_source(name, temperature)
    if name == "prior":
        return ZSource(temperature=temperature)
    if embedded is not None:
        return ZSource(embedded, path, temperature)
    if name == "posterior":
        mixture = posterior_for(path, step, nz, weights_only)
        return ZSource(mixture, posterior_path(run_dir_of(path)), temperature)  # type: ignore[arg-type]
    if path is None or weights_only:
        return ZSource(temperature=temperature, why=f"auto: {path} carries no posterior")
    try:
        mixture = current_posterior(run_dir_of(path), step, nz)
    except CheckpointError as exc:
        return ZSource(temperature=temperature, why=f"auto: {exc}")
    if mixture is None:
        return ZSource(temperature=temperature, why=f"auto: no posterior fitted for {run_dir_of(path)}")
    return ZSource(mixture, posterior_path(run_dir_of(path)), temperature)
