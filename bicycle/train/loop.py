"""The training loop: run dir, checkpoints, samples, progress, observer hooks, clean interruption."""
from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bicycle.build import build_dataset, build_eval_dataset, pick_device, resolve
from bicycle.config import RunConfig
from bicycle.errors import CheckpointError, NonFiniteError, PeerLost, TrainingDiverged
from bicycle.io import (atomic_write_bytes, load_checkpoint, load_networks, load_optimizers, remove_stale_temporaries,
                        resolve_checkpoint_path, writing)
from bicycle.plugins import Plugins, get_plugins
from bicycle.runlock import run_dir_writer
from bicycle.train.checkpoints import checkpoint_name, write_checkpoint
from bicycle.train.data import BatchStream
from bicycle.train.datafiles import manifest_metadata, manifests, resume_data_warning, run_splits, write_bad_list
from bicycle.train.guard import Divergence
from bicycle.train.execution import use_cuda_graphs
from bicycle.train.distributed import (DDP_EAGER_NOTE, DDP_GRAPH_WARMUP, SINGLE, Group, World, device_for,
                                      rank_rng_tensors, restore_rank_rng)
from bicycle.train.graph import DEFAULT_WARMUP, GraphedStep
from bicycle.train.prefetch import for_device as prefetcher_for
from bicycle.train.progress import Progress, fmt_duration
from bicycle.train.runlog import RunLog
from bicycle.train.collapse import CollapseMonitor
from bicycle.train.samples import HEALTH_AFTER, ProgressGrids, final_report
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
          echo: Callable[[str], None] = print, world: World = SINGLE) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume``). Returns when done or stopped.
    ``world``: this process's rank under torchrun (:mod:`bicycle.train.distributed`); rank 0 alone writes."""
    with run_dir_writer(run_dir, resume=resume, hold=world.main):
        return _train_world(cfg, run_dir, resume, plugins or get_plugins(), echo, world)


def _train_world(cfg: RunConfig, run_dir: Path, resume: bool, plugins: Plugins, echo: Callable[[str], None],
                 world: World) -> TrainResult:
    if not world.launched:
        return _train(cfg, run_dir, resume, plugins, echo, None)
    group = Group(world, device_for(world, cfg.train.device), capture=cfg.train.cuda_graphs is True)
    try:
        return _train(cfg, run_dir, resume, plugins, echo if world.main else _quiet, group)
    except TrainingDiverged as exc:  # every rank decided it at the same step: one verdict, printed by rank 0
        if world.main:
            from bicycle.reporting import announce
            announce(exc)
        exc.reported = True
        with contextlib.suppress(RuntimeError):
            group.barrier()  # nobody exits (and makes torchrun stop the others) before rank 0 has printed
        raise
    except RuntimeError as exc:  # a collective failed: a peer died or timed out (torchrun restarts or ends the job)
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise PeerLost(f"rank {world.rank}: lost the other ranks ({last[:300]})") from exc
    finally:
        group.close()


def _quiet(line: str) -> None:
    """Ranks other than 0 print nothing: rank 0 speaks for the job."""


def _train(cfg: RunConfig, run_dir: Path, resume: bool, plugins: Plugins, echo: Callable[[str], None],
           group: Group | None) -> TrainResult:
    registry = plugins.registry
    world = group.world if group is not None else SINGLE
    main = world.main
    t_start = time.perf_counter()
    ckpt = load_checkpoint(run_dir) if resume else None

    data_notes: list[str | None] = []  # said once the run log is open
    with group.main_first("data-check") if group is not None else contextlib.nullcontext():  # rank 0 checks first
        dataset = build_dataset(cfg, registry, "train")
        val = build_eval_dataset(cfg, registry, "the sample grids", echo=data_notes.append, train=dataset)
        splits = run_splits(dataset, val)  # both splits checked before anything is written
    data_files = manifests(splits)
    cfg = resolve(cfg, registry, dataset)
    device = group.device if group is not None else pick_device(cfg.train.device)
    graphs, graphs_note = use_cuda_graphs(cfg.train.cuda_graphs, device)
    ddp_stream, warmup = None, DEFAULT_WARMUP
    if group is not None and graphs:
        if cfg.train.cuda_graphs:  # asked for: DDP inside the captured iteration, as PyTorch documents it
            ddp_stream, warmup = torch.cuda.Stream(device), DDP_GRAPH_WARMUP
        else:
            graphs, graphs_note = False, DDP_EAGER_NOTE
    state = build_state(cfg, registry, device, world=world, ddp_stream=ddp_stream)
    start = 0
    if ckpt is not None:
        load_networks(ckpt, state.nets)
        load_optimizers(ckpt, state.optimizers)
        start = ckpt.step
        data_notes.append(restore_rank_rng(ckpt, world, cfg.train.seed))
        assert state.guard is not None
        state.guard.reset(start)

    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    if main:
        with writing(run_dir):
            _prepare_run_dir(run_dir, echo)
    log = RunLog(run_dir if main else None)
    echo = log.tee(echo)

    def notify(hook: str, **kwargs) -> None:  # an observer that raises is disabled with a warning, logged
        if main:
            plugins.notify(hook, warn=echo, **kwargs)

    def together(flag: bool) -> bool:  # every rank takes the same decision
        return group.any(flag) if group is not None else flag

    ranks = f" per rank x {world.size} ranks (global batch {cfg.train.batch_size * world.size})" if group else ""
    echo(f"bicycle train {'resuming at step ' + str(start) if ckpt else 'from scratch'}: model {cfg.train.model}, "
         f"{cfg.net.image_size} px, batch {cfg.train.batch_size}{ranks}, {cfg.train.steps} steps, device {device}")
    if main:
        with writing(run_dir / "config.json"):
            atomic_write_bytes(run_dir / "config.json", (cfg.to_json() + "\n").encode())
        data_notes.append(write_bad_list(run_dir, splits))
    if ckpt is not None:
        data_notes.append(resume_data_warning(ckpt.metadata, data_files))
    for line in filter(None, data_notes):
        echo(line)
    # not during lambda_KL's warm-up: the encoder is still being let off the prior there
    collapse = (CollapseMonitor(val, cfg.net.nz, cfg.train.seed, cfg.train.steps, state.model.variational,
                                max(HEALTH_AFTER, cfg.loss.kl_warmup)) if state.model.uses_encoder and main else None)
    grids = ProgressGrids(val, cfg.net.nz, cfg.train.seed, sample_dir, cfg.train.steps, collapse)

    total = cfg.train.steps
    stream = BatchStream(dataset, cfg.train.batch_size, cfg.train.seed, start, shard=(world.rank, world.size))
    batches = prefetcher_for(stream, device)
    progress = Progress(total, start, log=log.write, stream=None if main else _NullStream())
    notify("bicycle_train_start", config=cfg, run_dir=run_dir, start_step=start)
    if graphs_note:
        echo(graphs_note)
    stepper = _stepper(cfg, state, device, graphs, warmup)

    def checkpoint(step: int) -> Path | None:
        """Rank 0 writes (with every rank's RNG streams); a failure there stops every rank."""
        extra = rank_rng_tensors(group) if group is not None else {}
        meta = {**manifest_metadata(data_files), "world_size": str(world.size)}
        failure: BaseException | None = None
        path = None
        if main:
            try:
                path = write_checkpoint(ckpt_dir, cfg, state, step, batches.position(), meta, extra)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other ranks heard of it
                failure = exc
        if group is not None:  # 0: written, 1: non-finite weights (a divergence on every rank), 2: another failure
            code = group.max(0 if failure is None else 1 if isinstance(failure, NonFiniteError) else 2)
            if failure is None and code == 1:
                failure = NonFiniteError(f"weights of step {step} (rank 0 refused to write them)")
            elif failure is None and code == 2:
                failure = PeerLost(f"rank {world.rank}: rank 0 could not write the checkpoint of step {step} (see its output)")
        if failure is not None:
            raise failure
        notify("bicycle_train_checkpoint", step=step, path=path, config=cfg, run_dir=run_dir)
        return path

    step, interrupted, eta_shown, diverged = start, False, False, None
    with _StopFlag() as flag, batches:
        while step < total:
            if together(flag.stop):  # a signal to any rank stops every rank at the same step
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
                diverged = _diverged(state, step, together)  # one host read, only where something is logged or written
                if diverged is not None:
                    break
            if step % cfg.train.log_every == 0 or step == total:
                values = {k: float(v) for k, v in metrics.items()}  # the only host read of the losses
                if group is not None:
                    values = group.mean(values)  # logged: the average over ranks
                progress.update(step, values)
                notify("bicycle_train_step", step=step,
                               metrics={**values, "lr": cfg.optim.lr * factor, "lambda_kl": cfg.loss.kl * kl_ramp,
                                        "sec_per_step": progress.rate(step)},
                               config=cfg, run_dir=run_dir)
            if step % cfg.train.sample_every == 0 and main:
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
    diverged = diverged or _diverged(state, step, together)  # a Ctrl-C may come between two checks
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
                     "z_sensitivity": grids.history, "ignoring_z_warning": grids.warned,
                     "posterior_collapse": collapse.history if collapse else None,
                     "posterior_collapse_warning": collapse.warned if collapse else None}
    if not interrupted and main:
        with writing(run_dir):
            summary.update(final_report(cfg, state.nets, val, sample_dir, device, echo))
            from bicycle.posterior import fit_after_training
            fitted = fit_after_training(state.nets.E, dataset, device, run_dir, ckpt_dir / checkpoint_name(step), step,
                                        cfg.train.seed, echo)
            if fitted is not None:
                summary["posterior"] = {k: fitted[k] for k in ("path", "components", "points", "log_likelihood")}
            atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    elif interrupted:
        echo(f"interrupted at step {step}; resume with: bicycle train --resume {run_dir}")
    notify("bicycle_train_end", step=step, config=cfg, run_dir=run_dir, interrupted=interrupted)
    log.close()
    return TrainResult(run_dir, step, interrupted, time.perf_counter() - t_start, summary, flag.signal)


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
