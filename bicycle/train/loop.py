"""The training loop: run dir, checkpoints, samples, progress, observer hooks, clean interruption."""
from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bicycle.config import RESUMABLE_KEYS, RunConfig
from bicycle.data.base import oracle_of
from bicycle.errors import ConfigError, DataError
from bicycle.metrics import z_sensitivity
from bicycle.io import atomic_write_bytes, load_checkpoint, load_networks, load_optimizers, save_checkpoint, write_latest
from bicycle.models import MODELS, Objective, draw_noise
from bicycle.plugins import Plugins, get_plugins
from bicycle.sample import distinct_valid_modes, sample_grid
from bicycle.train.build import base_lrs as network_lrs, build_dataset, build_networks, build_optimizers, kl_factor, lr_factor, pick_device, resolve
from bicycle.train.data import BatchStream
from bicycle.train.graph import GraphedStep, autocast, host_lrs, prepare_networks, use_cuda_graphs
from bicycle.train.progress import Progress, fmt_duration
from bicycle.train.step import TrainState, train_step

GRID_INPUTS, GRID_SAMPLES = 4, 6
# z-sensitivity (bicycle.metrics.z_sensitivity) below this after 10% of training: G is ignoring z.
Z_SENSITIVITY_WARNING = 0.1
HEALTH_AFTER = 0.1
FINAL_INPUTS, FINAL_SAMPLES = 8, 20
WARMUP_STEPS = 3


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
    from bicycle.config import replace
    return replace(stored, {k: r[k] for k in changed if k in RESUMABLE_KEYS})


def _checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def _prune(folder: Path, keep: int) -> None:
    files = sorted(folder.glob("step_*.safetensors"))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)


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
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    nets = build_networks(cfg, registry)
    graphs, graphs_note = use_cuda_graphs(cfg.train.cuda_graphs, device)
    for _, m in nets.items():
        m.to(device).train()
    prepare_networks(nets, cfg.train.precision, cfg.train.compile)
    optimizers = build_optimizers(cfg, nets)
    start = 0
    if ckpt is not None:
        load_networks(ckpt, nets)
        load_optimizers(ckpt, optimizers)
        start = ckpt.step
    model = MODELS[cfg.train.model]
    # lambda_KL's warm-up multiplier: a device tensor refilled before each step (None: constant, as the paper)
    kl_scale = torch.ones((), device=device) if cfg.loss.kl_warmup > 0 else None
    state = TrainState(nets, optimizers, model, Objective(cfg.loss, cfg.net.gan_mode, cfg.train.impl, kl_scale))

    ckpt_dir, sample_dir = run_dir / "checkpoints", run_dir / "samples"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sample_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.json", (cfg.to_json() + "\n").encode())

    try:
        val = build_dataset(cfg, registry, "val")
    except DataError:
        val = dataset
    n_grid = min(GRID_INPUTS, len(val))
    grid_a, grid_b = val.get_batch(list(range(n_grid)))
    zgen = torch.Generator().manual_seed(cfg.train.seed + 1)
    grid_z = torch.randn(n_grid, GRID_SAMPLES, cfg.net.nz, generator=zgen)

    health = {"warned": False, "history": []}

    def write_samples(step: int) -> Path:
        for _, m in nets.items():
            m.eval()
        image, outs = sample_grid(nets, grid_a.to(device), grid_b.to(device), grid_z.to(device))
        for _, m in nets.items():
            m.train()
        path = sample_dir / f"step_{step:08d}.png"
        image.save(path)
        plugins.notify("bicycle_train_sample", step=step, path=path, config=cfg, run_dir=run_dir)
        if n_grid > 1:
            sens = z_sensitivity(outs.float().cpu())
            health["history"].append((step, round(sens, 4)))
            if step >= HEALTH_AFTER * total and sens < Z_SENSITIVITY_WARNING and not health["warned"]:
                health["warned"] = True
                progress.message(f"warning: G is ignoring z (z-sensitivity {sens:.3f} < {Z_SENSITIVITY_WARNING} at step "
                                 f"{step}): outputs for different z barely differ; expect mode collapse")
        return path

    def write_checkpoint(step: int, stream: BatchStream) -> Path:
        epoch, offset = stream.position()
        with host_lrs(optimizers):  # the graphed step keeps lrs as device tensors
            path = save_checkpoint(ckpt_dir / _checkpoint_name(step), cfg, nets, step, optimizers,
                                   {"data_epoch": str(epoch), "data_offset": str(offset)})
        write_latest(ckpt_dir, path.name)
        _prune(ckpt_dir, cfg.train.keep_checkpoints)
        plugins.notify("bicycle_train_checkpoint", step=step, path=path, config=cfg, run_dir=run_dir)
        return path

    total = cfg.train.steps
    stream = BatchStream(dataset, cfg.train.batch_size, cfg.train.seed, start)
    progress = Progress(total, start)
    plugins.notify("bicycle_train_start", config=cfg, run_dir=run_dir, start_step=start)
    step, interrupted, eta_shown = start, False, False
    base_lrs = network_lrs(cfg, optimizers)
    graphed = None
    if graphs_note:
        echo(graphs_note)
    if graphs:
        s, nz = cfg.net.image_size, cfg.net.nz
        graphed = GraphedStep(state, (cfg.train.batch_size, cfg.net.in_channels, s, s),
                              (cfg.train.batch_size, cfg.net.out_channels, s, s), nz, device, base_lrs,
                              warmup=WARMUP_STEPS, precision=cfg.train.precision)
    with _StopFlag() as flag:
        while step < total:
            if flag.stop:
                interrupted = True
                break
            factor = lr_factor(step, total, cfg.optim.decay_start)
            kl_ramp = kl_factor(step, total, cfg.loss.kl_warmup)
            if kl_scale is not None:  # outside any graph: fill_ with a host scalar
                kl_scale.fill_(kl_ramp)
            a, b = stream.next()
            if graphed is not None:  # lr tensors refilled outside the graph, batch into static buffers
                graphed.set_lr_factor(factor)
                metrics = graphed.step(a, b)
            else:
                for k, opt in optimizers.items():
                    for group in opt.param_groups:
                        group["lr"] = base_lrs[k] * factor
                noise = draw_noise(model, a.shape[0], cfg.net.nz, device)
                with autocast(device, cfg.train.precision):
                    metrics = train_step(state, a.to(device, non_blocking=True), b.to(device, non_blocking=True), noise)
            step += 1
            if step == start + WARMUP_STEPS:
                progress.reset_rate(step)
            if not eta_shown and step >= start + WARMUP_STEPS + 10:
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
                write_samples(step)
            if step % cfg.train.checkpoint_every == 0 and step < total:
                write_checkpoint(step, stream)
    progress.close()
    if step > start or ckpt is None:
        path = write_checkpoint(step, stream)
        echo(f"checkpoint: {path}")
    summary: dict = {"step": step, "seconds": round(time.perf_counter() - t_start, 1),
                     "z_sensitivity": health["history"], "ignoring_z_warning": health["warned"]}
    if not interrupted:
        summary.update(final_report(cfg, nets, val, sample_dir, device, echo))
        atomic_write_bytes(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    else:
        echo(f"interrupted at step {step}; resume with: bicycle train --resume {run_dir}")
    plugins.notify("bicycle_train_end", step=step, config=cfg, run_dir=run_dir, interrupted=interrupted)
    return TrainResult(run_dir, step, interrupted, time.perf_counter() - t_start, summary)


def final_report(cfg: RunConfig, nets, val, sample_dir: Path, device: torch.device, echo) -> dict:
    """Final grid (8 inputs x 20 samples) and, with an oracle, distinct valid modes per input."""
    n = min(FINAL_INPUTS, len(val))
    a, b = val.get_batch(list(range(n)))
    z = torch.randn(n, FINAL_SAMPLES, cfg.net.nz, generator=torch.Generator().manual_seed(cfg.train.seed + 2))
    for _, m in nets.items():
        m.eval()
    image, outs = sample_grid(nets, a.to(device), b.to(device), z.to(device))
    path = sample_dir / "final.png"
    image.save(path)
    echo(f"samples: {path} (a row per input: the input, ground truth, encoded, {FINAL_SAMPLES} random z)")
    oracle = oracle_of(val)
    if oracle is None:
        return {"final_grid": str(path)}
    distinct, valid = distinct_valid_modes(oracle, a, outs.cpu())
    at_least_3 = int((distinct >= 3).sum())
    echo(f"oracle: valid rate {valid.float().mean():.2f}; distinct valid modes per input {distinct.tolist()} "
         f"(of {oracle.num_modes}); {at_least_3}/{n} inputs show >= 3 modes")
    return {"final_grid": str(path), "valid_rate": round(float(valid.float().mean()), 4),
            "modes_per_input": distinct.tolist(), "inputs_with_3_modes": at_least_3, "inputs": n,
            "samples_per_input": FINAL_SAMPLES}
