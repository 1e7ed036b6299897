"""The training loop: run dir, checkpoints, samples, progress, observer hooks, clean interruption."""
from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bicycle.build import build_dataset, build_eval_dataset, pick_device, resolve
from bicycle.config import RunConfig
from bicycle.errors import CheckpointError, NonFiniteError, TrainingDiverged
from bicycle.io import (atomic_write_bytes, load_checkpoint, load_networks, load_optimizers, remove_stale_temporaries,
                        resolve_checkpoint_path, writing)
from bicycle.plugins import Plugins, get_plugins
from bicycle.train.checkpoints import checkpoint_name, write_checkpoint
from bicycle.train.data import BatchStream
from bicycle.train.datafiles import manifest_metadata, manifests, resume_data_warning, run_splits, write_bad_list
from bicycle.train.guard import Divergence
from bicycle.train.execution import use_cuda_graphs
from bicycle.train.graph import GraphedStep
from bicycle.train.prefetch import for_device as prefetcher_for
from bicycle.train.progress import Progress, fmt_duration
from bicycle.train.runlog import RunLog
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
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag checked between steps, so a step is never cut in half; ``signal`` says which."""

    def __init__(self) -> None:
        self.stop = False
        self.signal: int | None = None
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
        self.stop, self.signal = True, signum

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
    data_notes: list[str | None] = []  # said once the run log is open
    val = build_eval_dataset(cfg, registry, "the sample grids", echo=data_notes.append, train=dataset)
    splits = run_splits(dataset, val)  # both splits checked before anything is written
    data_files = manifests(splits)
    cfg = resolve(cfg, registry, dataset)
    device = pick_device(cfg.train.device)
    graphs, graphs_note = use_cuda_graphs(cfg.train.cuda_graphs, device)
    state = build_state(cfg, registry, device)
    start = 0
    if ckpt is not None:
        load_networks(ckpt, state.nets)
        load_optimizers(ckpt, state.optimizers)
        start = ckpt.step
        assert state.guard is not None
        state.guard.reset(start)

    with writing(run_dir):
        ckpt_dir, sample_dir = _prepare_run_dir(run_dir, echo)
    log = RunLog(run_dir)
    echo = log.tee(echo)

    def notify(hook: str, **kwargs) -> None:  # an observer that raises is disabled with a warning, logged
        plugins.notify(hook, warn=echo, **kwargs)

    echo(f"bicycle train {'resuming at step ' + str(start) if ckpt else 'from scratch'}: model {cfg.train.model}, "
         f"{cfg.net.image_size} px, batch {cfg.train.batch_size}, {cfg.train.steps} steps, device {device}")
    with writing(run_dir / "config.json"):
        atomic_write_bytes(run_dir / "config.json", (cfg.to_json() + "\n").encode())
    data_notes.append(write_bad_list(run_dir, splits))
    if ckpt is not None:
        data_notes.append(resume_data_warning(ckpt.metadata, data_files))
    for line in filter(None, data_notes):
        echo(line)
    grids = ProgressGrids(val, cfg.net.nz, cfg.train.seed, sample_dir, cfg.train.steps)

    total = cfg.train.steps
    batches = prefetcher_for(BatchStream(dataset, cfg.train.batch_size, cfg.train.seed, start), device)
    progress = Progress(total, start, log=log.write)
    notify("bicycle_train_start", config=cfg, run_dir=run_dir, start_step=start)
    if graphs_note:
        echo(graphs_note)
    stepper = _stepper(cfg, state, device, graphs)

    def checkpoint(step: int) -> Path:
        path = write_checkpoint(ckpt_dir, cfg, state, step, batches.position(), manifest_metadata(data_files))
        notify("bicycle_train_checkpoint", step=step, path=path, config=cfg, run_dir=run_dir)
        return path

    step, interrupted, eta_shown, diverged = start, False, False, None
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
            writes = step % cfg.train.sample_every == 0 or step % cfg.train.checkpoint_every == 0
            if writes or step % cfg.train.log_every == 0 or step == total:
                diverged = _diverged(state)  # one host read, only where something is logged or written
                if diverged is not None:
                    break
            if step % cfg.train.log_every == 0 or step == total:
                values = {k: float(v) for k, v in metrics.items()}  # the only host read of the losses
                progress.update(step, values)
                notify("bicycle_train_step", step=step,
                               metrics={**values, "lr": cfg.optim.lr * factor, "lambda_kl": cfg.loss.kl * kl_ramp,
                                        "sec_per_step": progress.rate(step)},
                               config=cfg, run_dir=run_dir)
            if step % cfg.train.sample_every == 0:
                wants = {arg: plugins.listening("bicycle_train_sample", arg) for arg in ("image", "measures")}
                with writing(sample_dir, after=_last_good(ckpt_dir) + " (intact)"):
                    grid = grids.write(state.nets, step, device, **wants)
                notify("bicycle_train_sample", step=step, path=grid.path, config=cfg, run_dir=run_dir,
                       image=grid.image, measures=grid.measures)
                if grid.warning:
                    progress.message(grid.warning)
            if step % cfg.train.checkpoint_every == 0 and step < total:
                diverged = _checkpoint_or_divergence(checkpoint, step, ckpt_dir)
                if diverged is not None:
                    break
    progress.close()
    diverged = diverged or _diverged(state)  # a Ctrl-C may come between two checks
    if diverged is None and (step > start or ckpt is None):
        diverged = _checkpoint_or_divergence(checkpoint, step, ckpt_dir, echo)
    if diverged is not None:
        notify("bicycle_train_end", step=step, config=cfg, run_dir=run_dir, interrupted=True)
        message = (f"{diverged.describe()}; stopped at step {step}, no checkpoint written after step "
                   f"{diverged.step - 1}; {_last_good(ckpt_dir)}")
        log.write(f"Error: {message}")
        log.close()
        raise TrainingDiverged(message)
    summary: dict = {"step": step, "seconds": round(time.perf_counter() - t_start, 1),
                     "z_sensitivity": grids.history, "ignoring_z_warning": grids.warned}
    if not interrupted:
        with writing(run_dir):
            summary.update(final_report(cfg, state.nets, val, sample_dir, device, echo))
            atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    else:
        echo(f"interrupted at step {step}; resume with: bicycle train --resume {run_dir}")
    notify("bicycle_train_end", step=step, config=cfg, run_dir=run_dir, interrupted=interrupted)
    log.close()
    return TrainResult(run_dir, step, interrupted, time.perf_counter() - t_start, summary, flag.signal)


def _stepper(cfg: RunConfig, state: TrainState, device: torch.device, graphs: bool) -> GraphedStep:
    """The one step path: captured and replayed when ``graphs``, the same body eagerly otherwise."""
    s, n = cfg.net.image_size, cfg.train.batch_size
    return GraphedStep(state, (n, cfg.net.in_channels, s, s), (n, cfg.net.out_channels, s, s), cfg.net.nz, device,
                       precision=cfg.train.precision, capture=graphs)


def _diverged(state: TrainState) -> Divergence | None:
    return state.guard.first_bad() if state.guard is not None else None


def _checkpoint_or_divergence(checkpoint: Callable[[int], Path], step: int, ckpt_dir: Path,
                              echo: Callable[[str], None] | None = None) -> Divergence | None:
    """Write the checkpoint of ``step``; weights that became non-finite (with finite losses so far) are a
    divergence at this step instead, and nothing is written."""
    try:
        with writing(ckpt_dir / checkpoint_name(step), after=_last_good(ckpt_dir) + " (intact)"):
            path = checkpoint(step)
    except NonFiniteError as exc:
        return Divergence(step, {}, what=f"weights ({exc})")
    if echo is not None:
        echo(f"checkpoint: {path}")
    return None


def _last_good(ckpt_dir: Path) -> str:
    try:
        return f"the last good checkpoint is {resolve_checkpoint_path(ckpt_dir)}"
    except CheckpointError:
        return "no checkpoint had been written"


def _prepare_run_dir(run_dir: Path, echo: Callable[[str], None]) -> tuple[Path, Path]:
    """checkpoints/ and samples/ under ``run_dir``, without the temporary files of writes a crash cut short."""
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    for folder in (ckpt_dir, sample_dir):
        folder.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(ckpt_dir) + remove_stale_temporaries(run_dir)
    if stale:
        echo(f"removed {len(stale)} temporary file(s) left by an interrupted write: {', '.join(p.name for p in stale[:3])}")
    return ckpt_dir, sample_dir
