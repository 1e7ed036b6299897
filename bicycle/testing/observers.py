"""Observer plugins (the ``bicycle_train_*`` hooks) driven through a simulated run, without training.

    calls = simulate_training(my_plugin, tmp_path, steps=6)               # a run of 6 steps
    calls = simulate_training(my_plugin, tmp_path, steps=8, start_step=4)  # its resume

The plugin is registered against bicycle's hookspecs (an argument a hook does not have is an error),
then every observer hook it implements is called in the training loop's order with the loop's
arguments. A hook that raises propagates (the real loop would disable the plugin instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bicycle.config import PRESETS, RunConfig, replace

LOSSES = ("G_GAN", "G_L1", "kl", "z_L1", "D", "D2")  # what BicycleGAN's step reports
GRID_SHAPE = (4 * 34 + 2, 9 * 34 + 2, 3)  # a 32 px progress grid: 4 inputs x (A, B, encoded, 6 samples)


@dataclass(frozen=True)
class HookCall:
    hook: str
    kwargs: dict[str, Any]


def simulate_training(plugin: object, run_dir: Path, *, steps: int, start_step: int = 0, log_every: int = 2,
                      sample_every: int = 2, checkpoint_every: int = 2, oracle: bool = True,
                      interrupted: bool = False, crash: bool = False, seed: int = 0) -> list[HookCall]:
    """Run the observer hooks of ``plugin`` from ``start_step`` to ``steps`` into ``run_dir``.

    Values are random from ``(seed, step)``: give a crashed session and its resume different seeds to
    tell their points apart. ``oracle``: the sample measures include the oracle's. ``crash``: the
    process dies after the last step (no final checkpoint, no ``bicycle_train_end``). Returns every call
    made, with the arguments of the full hook signature.
    """
    from bicycle.plugins import build_plugins

    hooks = build_plugins([plugin], autoload=False).manager.hook
    cfg = replace(PRESETS["demo"], {"train.steps": steps, "train.log_every": log_every,
                                    "train.sample_every": sample_every, "train.checkpoint_every": checkpoint_every})
    calls: list[HookCall] = []

    def call(hook: str, **kwargs: Any) -> None:
        kwargs = {**kwargs, "config": cfg, "run_dir": run_dir}
        calls.append(HookCall(hook, kwargs))
        getattr(hooks, hook)(**kwargs)

    call("bicycle_train_start", start_step=start_step)
    for step in range(start_step + 1, steps + 1):
        rng = np.random.default_rng([seed, step])
        if step % log_every == 0 or step == steps:
            call("bicycle_train_step", step=step, metrics=step_metrics(cfg, step, rng))
        if step % sample_every == 0:
            call("bicycle_train_sample", step=step, path=run_dir / "samples" / f"step_{step:08d}.png",
                 image=grid_image(rng), measures=sample_measures(rng, oracle))
        if step % checkpoint_every == 0 and step < steps:
            call("bicycle_train_checkpoint", step=step, path=_checkpoint(run_dir, step))
    if crash:
        return calls
    if steps > start_step or start_step == 0:
        call("bicycle_train_checkpoint", step=steps, path=_checkpoint(run_dir, steps))
    call("bicycle_train_end", step=steps, interrupted=interrupted)
    return calls


def step_metrics(cfg: RunConfig, step: int, rng: np.random.Generator) -> dict[str, float]:
    """What ``bicycle_train_step`` gets: the losses, "lr", "lambda_kl", "sec_per_step" (Python floats)."""
    losses = {name: float(v) for name, v in zip(LOSSES, rng.uniform(0.05, 2.0, len(LOSSES)))}
    return {**losses, "lr": cfg.optim.lr, "lambda_kl": cfg.loss.kl, "sec_per_step": float(rng.uniform(0.01, 0.1))}


def grid_image(rng: np.random.Generator) -> np.ndarray:
    """A read-only uint8 [H, W, 3] picture, as ``bicycle_train_sample`` gets."""
    image = rng.integers(0, 256, GRID_SHAPE, dtype=np.uint8)
    image.setflags(write=False)
    return image


def sample_measures(rng: np.random.Generator, oracle: bool) -> dict[str, float]:
    measures = {"z_sensitivity": float(rng.uniform(0.0, 1.5))}
    if oracle:
        measures.update(valid_rate=float(rng.uniform()), modes_per_input=float(rng.uniform(1.0, 6.0)))
    return measures


def _checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}.safetensors"  # named, never written
