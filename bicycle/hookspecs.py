"""Every plugin hook of bicycle. Plugins implement them with ``@bicycle.hookimpl``.

Component hooks are called once, when the plugin manager is first built; each returns a list of
specs (see :mod:`bicycle.registry` for the backbone/injector contract). The built-in components are
registered through exactly these hooks (``bicycle.builtin``). Observer hooks are called by the
training loop on the main process; their return values are ignored; they must not modify the
tensors they receive.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from bicycle.config import RunConfig
    from bicycle.registry import BackboneSpec, DatasetSpec, InjectorSpec

PROJECT = "bicycle"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def bicycle_backbones() -> list[BackboneSpec]:
    """Return the generator backbones this plugin provides (may be empty)."""


@hookspec
def bicycle_injectors() -> list[InjectorSpec]:
    """Return the z-injection strategies this plugin provides (may be empty)."""


@hookspec
def bicycle_datasets() -> list[DatasetSpec]:
    """Return the datasets this plugin provides (may be empty)."""


@hookspec
def bicycle_train_start(config: RunConfig, run_dir: Path, start_step: int) -> None:
    """Called once before the first step (also on resume, with the step training resumes from)."""


@hookspec
def bicycle_train_step(step: int, metrics: dict[str, float], config: RunConfig, run_dir: Path) -> None:
    """Called every ``train.log_every`` steps with the losses of that step as Python floats
    (read from the device only then) and "lr", "lambda_kl" (with its warm-up), "sec_per_step". ``step`` counts from 1."""


@hookspec
def bicycle_train_sample(step: int, path: Path, config: RunConfig, run_dir: Path, image: np.ndarray,
                         measures: dict[str, float]) -> None:
    """Called after a progress grid (PNG at ``path``) was written during training. ``image``: that grid,
    uint8 [H, W, 3] (read-only). ``measures``: numbers on the grid's outputs, as Python floats:
    "z_sensitivity" (at least 2 inputs), and with a dataset oracle "valid_rate" and "modes_per_input".
    Both are computed only when an implementation declares them."""


@hookspec
def bicycle_train_checkpoint(step: int, path: Path, config: RunConfig, run_dir: Path) -> None:
    """Called after a checkpoint was written atomically to ``path``."""


@hookspec
def bicycle_train_end(step: int, config: RunConfig, run_dir: Path, interrupted: bool) -> None:
    """Called once when training stops (``interrupted``: stopped early by Ctrl-C)."""
