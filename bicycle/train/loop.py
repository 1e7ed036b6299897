"""The training loop: run dir, checkpoints, samples, progress, observer hooks, clean interruption. The ranks of a
torchrun job decide together through a :class:`~bicycle.train.coordinator.Coordinator`; one process decides alone."""
from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bicycle.build import prepare_run
from bicycle.config import RunConfig
from bicycle.errors import CheckpointError, NonFiniteError, TrainingDiverged
from bicycle.io import (Checkpoint, atomic_write_bytes, load_checkpoint, load_networks, load_optimizers,
                        remove_stale_temporaries, resolve_checkpoint_path, writing)
from bicycle.plugins import Plugins, get_plugins
from bicycle.train.runlock import run_dir_writer
from bicycle.train.checkpoints import checkpoint_name, write_checkpoint
from bicycle.train.collapse import CollapseMonitor
from bicycle.train.coordinator import Coordinator, coordinator_for
from bicycle.train.data import BatchStream
from bicycle.train.datafiles import manifest_metadata, manifests, resume_data_warning, run_splits, write_bad_list
from bicycle.train.distributed import SINGLE, World, restore_rank_rng
from bicycle.train.graph import DEFAULT_WARMUP, GraphedStep
from bicycle.train.guard import Divergence
from bicycle.train.prefetch import for_device as prefetcher_for
from bicycle.train.progress import Progress, fmt_duration
from bicycle.train.runlog import RunLog
from bicycle.train.samples import HEALTH_AFTER, ProgressGrids, final_report
from bicycle.train.schedule import kl_factor, lr_factor
from bicycle.train.state import TrainState, build_state

Echo = Callable[[str], None]


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
          echo: Echo = print, world: World = SINGLE) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume``). Returns when done or stopped.
    ``world``: this process's rank under torchrun (:mod:`bicycle.train.distributed`); rank 0 alone writes."""
    coord = coordinator_for(world, cfg)
    with run_dir_writer(run_dir, resume=resume, hold=world.main), coord.session():
        return _train(cfg, run_dir, resume, plugins or get_plugins(), coord.speaker(echo), coord)


@dataclass
class _Run:
    """What the steps, checkpoints and the end of one run share."""

    cfg: RunConfig
    run_dir: Path
    plugins: Plugins
    coord: Coordinator
    echo: Echo
    state: TrainState
    device: torch.device
    data_files: Any
    dataset: Any
    batches: Any = None
    posterior: dict | None = None  # the fit for the newest checkpoint (rank 0)

    @property
    def main(self) -> bool:
        return self.coord.world.main

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Rank 0 tells the observers; one that raises is disabled with a warning, logged."""
        if self.main:
            self.plugins.notify(hook, warn=self.echo, **kwargs)

    def diverged(self, step: int) -> Divergence | None:
        return _diverged(self.state, step, self.coord.any)

    def checkpoint(self, step: int) -> Path | None:
        """Rank 0 writes (with every rank's RNG streams); a failure there stops every rank."""
        extra = self.coord.rng_tensors() | (self.state.ema.tensors() if self.state.ema is not None else {})
        meta = {**manifest_metadata(self.data_files), "world_size": str(self.coord.world.size)}
        failure: BaseException | None = None
        path = None
        if self.main:
            try:
                path = write_checkpoint(self.ckpt_dir, self.cfg, self.state, step, self.batches.position(), meta, extra)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
                failure = exc
        failure = self.coord.agree(failure, step)
        if failure is not None:
            raise failure
        if path is not None:
            self.fit_posterior(path, step)
        self.notify("bicycle_train_checkpoint", step=step, path=path, config=self.cfg, run_dir=self.run_dir)
        return path

    def fit_posterior(self, checkpoint: Path, step: int) -> None:
        """Rank 0: the aggregate posterior of the checkpoint just written (what ``--z-source auto`` samples from),
        fitted with the encoder the run samples with; a failure is one line, never the end of the run."""
        from bicycle.inference.posterior import fit_at_checkpoint

        self.posterior = fit_at_checkpoint(self.state.sampling_nets.E, self.dataset, self.device, self.run_dir,
                                           checkpoint, step, self.cfg.train.seed, self.echo)

    def checkpoint_or_divergence(self, step: int, echo: Echo | None = None) -> Divergence | None:
        return _checkpoint_or_divergence(self.checkpoint, step, self.ckpt_dir, echo)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, plugins: Plugins, echo: Echo,
           coord: Coordinator) -> TrainResult:
    registry, world, t_start = plugins.registry, coord.world, time.perf_counter()
    ckpt = load_checkpoint(run_dir) if resume else None
    notes: list[str | None] = []  # said once the run log is open
    with coord.main_first("data-check"):  # rank 0 checks first
        data = prepare_run(cfg, registry, notes.append)
        splits = run_splits(data.train, data.val)  # both splits checked before anything is written
    cfg, dataset, val = data.cfg, data.train, data.val
    data_files = manifests(splits)
    device = coord.device_for(cfg.train.device)
    graphs, graphs_note, ddp_stream, warmup = coord.execution(cfg.train.cuda_graphs, device)
    state = build_state(cfg, registry, device, world=world, ddp_stream=ddp_stream)
    start = _restore(ckpt, state, world, cfg.train.seed, notes)
    log = _open_run_dir(run_dir, world, echo)
    run = _Run(cfg, run_dir, plugins, coord, log.tee(echo), state, device, data_files, dataset)
    run.echo(_banner(cfg, ckpt is not None, start, device, world))
    if run.main:
        with writing(run_dir / "config.json"):
            atomic_write_bytes(run_dir / "config.json", (cfg.to_json() + "\n").encode())
        notes.append(write_bad_list(run_dir, splits))
    if ckpt is not None:
        notes.append(resume_data_warning(ckpt.metadata, data_files))
    for line in filter(None, notes):
        run.echo(line)
    # not during lambda_KL's warm-up: the encoder is still being let off the prior there
    collapse = (CollapseMonitor(val, cfg.net.nz, cfg.train.seed, cfg.train.steps, state.model.variational,
                                max(HEALTH_AFTER, cfg.loss.kl_warmup)) if state.model.uses_encoder and run.main else None)
    grids = ProgressGrids(val, cfg.net.nz, cfg.train.seed, run_dir / "samples", cfg.train.steps, collapse)
    stream = BatchStream(dataset, cfg.train.batch_size, cfg.train.seed, start, shard=(world.rank, world.size))
    run.batches = prefetcher_for(stream, device)
    progress = Progress(cfg.train.steps, start, log=log.write, stream=None if run.main else _NullStream())
    run.notify("bicycle_train_start", config=cfg, run_dir=run_dir, start_step=start)
    if graphs_note:
        run.echo(graphs_note)
    stepper = _stepper(cfg, state, device, graphs, warmup)
    with _StopFlag() as flag, run.batches:
        step, interrupted, diverged = _steps(run, stepper, progress, grids, start, flag)
    progress.close()
    diverged = diverged or run.diverged(step)  # a Ctrl-C may come between two checks
    if diverged is None and (step > start or ckpt is None):
        diverged = run.checkpoint_or_divergence(step, run.echo)
    if diverged is not None:
        _stop(run, log, diverged, step)
    summary: dict = {"step": step, "seconds": round(time.perf_counter() - t_start, 1),
                     "z_sensitivity": grids.history, "ignoring_z_warning": grids.warned,
                     "posterior_collapse": collapse.history if collapse else None,
                     "posterior_collapse_warning": collapse.warned if collapse else None}
    if not interrupted:
        with run.coord.main_first("final_report"):  # the other ranks tear down with rank 0, not while it reports
            if run.main:
                _final_report(run, val, step, summary)
    else:
        run.echo(f"interrupted at step {step}; resume with: bicycle train --resume {run_dir}")
        run.coord.barrier()  # nobody exits (and makes torchrun stop the others) before rank 0 has printed
    run.notify("bicycle_train_end", step=step, config=cfg, run_dir=run_dir, interrupted=interrupted)
    log.close()
    return TrainResult(run_dir, step, interrupted, time.perf_counter() - t_start, summary, flag.signal)


def _restore(ckpt: Checkpoint | None, state: TrainState, world: World, seed: int, notes: list[str | None]) -> int:
    """Networks, optimizers and RNG streams from ``ckpt``; the step to start at."""
    if ckpt is None:
        return 0
    load_networks(ckpt, state.nets)
    load_optimizers(ckpt, state.optimizers)
    if state.ema is not None:
        state.ema.load(ckpt)
    notes.append(restore_rank_rng(ckpt, world, seed))
    assert state.guard is not None
    state.guard.reset(ckpt.step)
    return ckpt.step


def _open_run_dir(run_dir: Path, world: World, echo: Echo) -> RunLog:
    """Rank 0 prepares ``run_dir``; the run log (rank 0's only)."""
    if world.main:
        with writing(run_dir):
            _prepare_run_dir(run_dir, echo)
    return RunLog(run_dir if world.main else None)


def _banner(cfg: RunConfig, resumed: bool, start: int, device: torch.device, world: World) -> str:
    ranks = (f" per rank x {world.size} ranks (global batch {cfg.train.batch_size * world.size})"
             if world.launched else "")
    return (f"bicycle train {'resuming at step ' + str(start) if resumed else 'from scratch'}: model "
            f"{cfg.train.model}, {cfg.net.image_size} px, batch {cfg.train.batch_size}{ranks}, {cfg.train.steps} "
            f"steps, device {device}")


def _steps(run: _Run, stepper: GraphedStep, progress: Progress, grids: ProgressGrids, start: int,
           flag: _StopFlag) -> tuple[int, bool, Divergence | None]:
    """Train from ``start``: (the last step, interrupted?, a divergence or None)."""
    cfg, total = run.cfg, run.cfg.train.steps
    step, eta_shown = start, False
    while step < total:
        if run.coord.any(flag.stop):  # a signal to any rank stops every rank at the same step
            return step, True, None
        factor = lr_factor(step, total, cfg.optim.decay_start)
        kl_ramp = kl_factor(step, total, cfg.loss.kl_warmup)
        stepper.set_lr_factor(factor)  # all refilled outside any graph
        stepper.set_kl_factor(kl_ramp)
        stepper.set_ema_step(step)
        metrics = stepper.step(*run.batches.next())
        step += 1
        if step == start + stepper.warmup:
            progress.reset_rate(step)
        if not eta_shown and step >= start + stepper.warmup + 10:
            eta_shown = True
            progress.message(f"{progress.rate(step):.3f} s/step over the first steps: ETA {fmt_duration(progress.eta(step))}")
        logs = step % cfg.train.log_every == 0 or step == total
        writes = step % cfg.train.sample_every == 0 or step % cfg.train.checkpoint_every == 0
        if writes or logs:
            diverged = run.diverged(step)  # one host read, only where something is logged or written
            if diverged is not None:
                return step, False, diverged
        if logs:
            values = run.coord.mean({k: float(v) for k, v in metrics.items()})  # the only host read of the losses
            progress.update(step, values)  # logged: the average over ranks
            run.notify("bicycle_train_step", step=step,
                       metrics={**values, "lr": cfg.optim.lr * factor, "lambda_kl": cfg.loss.kl * kl_ramp,
                                "sec_per_step": progress.rate(step)},
                       config=cfg, run_dir=run.run_dir)
        if step % cfg.train.sample_every == 0 and run.main:
            _write_grid(run, grids, step, progress)
        if step % cfg.train.checkpoint_every == 0 and step < total:
            diverged = run.checkpoint_or_divergence(step)
            if diverged is not None:
                return step, False, diverged
    return step, False, None


def _write_grid(run: _Run, grids: ProgressGrids, step: int, progress: Progress) -> None:
    wants = {arg: run.plugins.listening("bicycle_train_sample", arg) for arg in ("image", "measures")}
    with writing(run.run_dir / "samples", after=_last_good(run.ckpt_dir) + " (intact)"):
        grid = grids.write(run.state.sampling_nets, step, run.device, **wants)
    run.notify("bicycle_train_sample", step=step, path=grid.path, config=run.cfg, run_dir=run.run_dir,
               image=grid.image, measures=grid.measures)
    if grid.warning:
        progress.message(grid.warning)


def _stop(run: _Run, log: RunLog, diverged: Divergence, step: int) -> None:
    run.notify("bicycle_train_end", step=step, config=run.cfg, run_dir=run.run_dir, interrupted=True)
    message = (f"{diverged.describe()}; stopped at step {step}, no checkpoint written after step "
               f"{diverged.step - 1}; {_last_good(run.ckpt_dir)}")
    log.write(f"Error: {message}")
    log.close()
    raise TrainingDiverged(message)


def _final_report(run: _Run, val, step: int, summary: dict) -> None:
    """Rank 0, after a finished run: the aggregate posterior, the final grids and oracle reports, summary.json."""
    from bicycle.inference.posterior import summary_line

    with writing(run.run_dir):
        if run.posterior is None or run.posterior["step"] != step:  # a resume of a finished run writes no checkpoint
            run.fit_posterior(run.ckpt_dir / checkpoint_name(step), step)
        fitted = run.posterior
        if fitted is not None:
            run.echo(summary_line(fitted) + f" (refit on more points: bicycle fit-posterior {run.run_dir})")
            summary["posterior"] = {k: fitted[k] for k in ("path", "kind", "components", "points", "mean_sigma",
                                                           "log_likelihood")}
        summary.update(final_report(run.cfg, run.state.sampling_nets, val, run.run_dir / "samples", run.device, run.echo,
                                    fitted["mixture"] if fitted is not None else None))
        atomic_write_bytes(run.run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def _stepper(cfg: RunConfig, state: TrainState, device: torch.device, graphs: bool,
             warmup: int = DEFAULT_WARMUP) -> GraphedStep:
    """The one step path: captured and replayed when ``graphs``, the same body eagerly otherwise."""
    s, n = cfg.net.image_size, cfg.train.batch_size
    return GraphedStep(state, (n, cfg.net.in_channels, s, s), (n, cfg.net.out_channels, s, s), cfg.net.nz, device,
                       precision=cfg.train.precision, capture=graphs, warmup=warmup)


def _diverged(state: TrainState, step: int, together: Callable[[bool], bool] = bool) -> Divergence | None:
    """This rank's divergence, or, when another rank diverged, one at ``step`` (decided by every rank)."""
    mine = state.guard.first_bad() if state.guard is not None else None
    if together(mine is not None) and mine is None:
        return Divergence(step, {}, what="losses on another rank")
    return mine


class _NullStream:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _checkpoint_or_divergence(checkpoint: Callable[[int], Path | None], step: int, ckpt_dir: Path,
                              echo: Echo | None = None) -> Divergence | None:
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


def _prepare_run_dir(run_dir: Path, echo: Echo) -> tuple[Path, Path]:
    """checkpoints/ and samples/ under ``run_dir``, without the temporary files of writes a crash cut short."""
    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    for folder in (ckpt_dir, sample_dir):
        folder.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(ckpt_dir) + remove_stale_temporaries(run_dir)
    if stale:
        echo(f"removed {len(stale)} temporary file(s) left by an interrupted write: {', '.join(p.name for p in stale[:3])}")
    return ckpt_dir, sample_dir
