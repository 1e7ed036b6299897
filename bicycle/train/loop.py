"""The training loop: run dir, checkpoints, samples, progress, observer hooks, clean interruption."""
from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bicycle.build import build_dataset, pick_device, resolve
from bicycle.config import RESUMABLE_KEYS, RunConfig, replace
from bicycle.errors import ConfigError, DataError
from bicycle.io import atomic_write_bytes, load_checkpoint, load_networks, load_optimizers
from bicycle.plugins import Plugins, get_plugins
from bicycle.train.checkpoints import write_checkpoint
from bicycle.train.data import BatchStream
from bicycle.train.execution import use_cuda_graphs
from bicycle.train.graph import GraphedStep
from bicycle.train.prefetch import for_device as prefetcher_for
from bicycle.train.progress import Progress, fmt_duration
from bicycle.train.samples import ProgressGrids, final_report
from bicycle.train.schedule import kl_factor, lr_factor
from bicycle.train.state import TrainState, build_state


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    seconds: float
    summary: dict = field(default_factory=dict)


def resume_config(stored: RunConfig, requested: RunConfig | None, changed: set[str]) -> RunConfig:
    """The stored config with the allowed changes; any other requested difference is a ConfigError."""
    if requested is None:
        return stored
    s, r = stored.flat(), requested.flat()
    bad = sorted(k for k in changed if k in r and s.get(k) != r[k] and k not in RESUMABLE_KEYS)
    if bad:
        diffs = ", ".join(f"{k} (run: {s.get(k)!r}, requested: {r[k]!r})" for k in bad)
        raise ConfigError(f"--resume may only change --steps, the device and logging flags; differs: {diffs}")
    return replace(stored, {k: r[k] for k in changed if k in RESUMABLE_KEYS})


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag checked between steps, so a step is never cut in half."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def train(cfg: RunConfig, run_dir: Path, *, resume: bool = False, plugins: Plugins | None = None,
          echo: Callable[[str], None] = print) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume``). Returns when done or stopped."""
    plugins = plugins or get_plugins()
    registry = plugins.registry
    t_start = time.perf_counter()
    ckpt = load_checkpoint(run_dir) if resume else None

    dataset = build_dataset(cfg, registry, "train")
    cfg = resolve(cfg, registry, dataset)
    device = pick_device(cfg.train.device)
    graphs, graphs_note = use_cuda_graphs(cfg.train.cuda_graphs, device)
    state = build_state(cfg, registry, device)
    start = 0
    if ckpt is not None:
        load_networks(ckpt, state.nets)
        load_optimizers(ckpt, state.optimizers)
        start = ckpt.step

    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sample_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.json", (cfg.to_json() + "\n").encode())
    try:
        val = build_dataset(cfg, registry, "val")
    except DataError:
        val = dataset
    grids = ProgressGrids(val, cfg.net.nz, cfg.train.seed, sample_dir, cfg.train.steps)

    total = cfg.train.steps
    batches = prefetcher_for(BatchStream(dataset, cfg.train.batch_size, cfg.train.seed, start), device)
    progress = Progress(total, start)
    plugins.notify("bicycle_train_start", config=cfg, run_dir=run_dir, start_step=start)
    if graphs_note:
        echo(graphs_note)
    stepper = _stepper(cfg, state, device, graphs)

    def checkpoint(step: int) -> Path:
        path = write_checkpoint(ckpt_dir, cfg, state, step, batches.position())
        plugins.notify("bicycle_train_checkpoint", step=step, path=path, config=cfg, run_dir=run_dir)
        return path

    step, interrupted, eta_shown = start, False, False
    with _StopFlag() as flag, batches:
        while step < total:
            if flag.stop:
                interrupted = True
                break
            factor = lr_factor(step, total, cfg.optim.decay_start)
            kl_ramp = kl_factor(step, total, cfg.loss.kl_warmup)
            stepper.set_lr_factor(factor)  # both refilled outside any graph
            stepper.set_kl_factor(kl_ramp)
            metrics = stepper.step(*batches.next())
            step += 1
            if step == start + stepper.warmup:
                progress.reset_rate(step)
            if not eta_shown and step >= start + stepper.warmup + 10:
                eta_shown = True
                progress.message(f"{progress.rate(step):.3f} s/step over the first steps: ETA {fmt_duration(progress.eta(step))}")
            if step % cfg.train.log_every == 0 or step == total:
                values = {k: float(v) for k, v in metrics.items()}  # the only host read of the losses
                progress.update(step, values)
                plugins.notify("bicycle_train_step", step=step,
                               metrics={**values, "lr": cfg.optim.lr * factor, "lambda_kl": cfg.loss.kl * kl_ramp,
                                        "sec_per_step": progress.rate(step)},
                               config=cfg, run_dir=run_dir)
            if step % cfg.train.sample_every == 0:
                path, warning = grids.write(state.nets, step, device)
                plugins.notify("bicycle_train_sample", step=step, path=path, config=cfg, run_dir=run_dir)
                if warning:
                    progress.message(warning)
            if step % cfg.train.checkpoint_every == 0 and step < total:
                checkpoint(step)
    progress.close()
    if step > start or ckpt is None:
        echo(f"checkpoint: {checkpoint(step)}")
    summary: dict = {"step": step, "seconds": round(time.perf_counter() - t_start, 1),
                     "z_sensitivity": grids.history, "ignoring_z_warning": grids.warned}
    if not interrupted:
        summary.update(final_report(cfg, state.nets, val, sample_dir, device, echo))
        atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    else:
        echo(f"interrupted at step {step}; resume with: bicycle train --resume {run_dir}")
    plugins.notify("bicycle_train_end", step=step, config=cfg, run_dir=run_dir, interrupted=interrupted)
    return TrainResult(run_dir, step, interrupted, time.perf_counter() - t_start, summary)


def _stepper(cfg: RunConfig, state: TrainState, device: torch.device, graphs: bool) -> GraphedStep:
    """The one step path: captured and replayed when ``graphs``, the same body eagerly otherwise."""
    s, n = cfg.net.image_size, cfg.train.batch_size
    return GraphedStep(state, (n, cfg.net.in_channels, s, s), (n, cfg.net.out_channels, s, s), cfg.net.nz, device,
                       precision=cfg.train.precision, capture=graphs)
