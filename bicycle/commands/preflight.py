"""One validation pass per command, before any slow work: flags and the resolved config (via
:func:`bicycle.build.resolve`: values, registry, device, fused-op impl), output paths (writable, room for
a checkpoint) and resume compatibility. Every problem is a :class:`~bicycle.errors.BicycleError` naming
the flag, value or path."""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bicycle.build import build_networks, resolve
from bicycle.config import RESUMABLE_KEYS, RunConfig, replace
from bicycle.errors import BicycleError, ConfigError, DataError, StorageError
from bicycle.io import resolve_checkpoint_path
from bicycle.registry import Registry
from bicycle.outputs import check_output_file, check_output_folder, check_writable
from bicycle.train.runlock import check_not_busy

if TYPE_CHECKING:
    from bicycle.train.distributed import World

# Room asked for beyond the next checkpoint (sample grids, the log, the file system's own slack).
SPACE_MARGIN_BYTES = 2 << 20


def resume_config(stored: RunConfig, requested: RunConfig | None, changed: set[str]) -> RunConfig:
    """The stored config with the allowed changes; any other requested difference is a ConfigError."""
    if requested is None:
        return stored
    s, r = stored.flat(), requested.flat()
    bad = sorted(k for k in changed if k in r and s.get(k) != r[k] and k not in RESUMABLE_KEYS)
    if bad:
        diffs = ", ".join(f"{k} (run: {s.get(k)!r}, requested: {r[k]!r})" for k in bad)
        raise ConfigError(f"--resume may only change --steps, the device and logging flags; differs: {diffs}")
    return replace(stored, {k: r[k] for k in changed if k in RESUMABLE_KEYS}, keep_none=True)


def check_resume_steps(cfg: RunConfig, done: int) -> None:
    if cfg.train.steps < done:
        raise ConfigError(f"--steps {cfg.train.steps} is below the run's current step {done}: nothing to train "
                          f"(give --steps above {done}, or leave it out)")


def checkpoint_bytes(cfg: RunConfig, registry: Registry) -> int:
    """Estimated size of one checkpoint: every network's parameters and Adam's two moments, float32
    (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        nets = build_networks(cfg, registry)
    return sum(3 * 4 * p.numel() for _, m in nets.items() for p in m.parameters())


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}".removesuffix(".0")


def next_checkpoint_bytes(cfg: RunConfig, registry: Registry, run_dir: Path, resume: bool) -> tuple[int, str] | None:
    """The size of the run's next checkpoint and where it comes from: a resumed run's newest checkpoint file,
    else the estimate of :func:`checkpoint_bytes`; None when neither is known (a plugin network that cannot
    be built on "meta")."""
    if resume:
        with contextlib.suppress(BicycleError, OSError):
            return resolve_checkpoint_path(run_dir).stat().st_size, "as large as its newest"
    try:
        return checkpoint_bytes(cfg, registry), "estimated"
    except Exception:  # noqa: BLE001 - a plugin network that cannot be built on "meta": skip the estimate
        return None


def check_room(where: Path, cfg: RunConfig, registry: Registry, flag: str, run_dir: Path | None = None,
               resume: bool = False) -> None:
    size = next_checkpoint_bytes(cfg, registry, run_dir or where, resume)
    if size is None:
        return
    free = shutil.disk_usage(where).free
    if free < size[0] + SPACE_MARGIN_BYTES:
        raise StorageError(f"{flag} {where}: {_mib(free)} MiB free; a checkpoint of this run needs {_mib(size[0])} MiB "
                           f"({size[1]}) and samples and logs {_mib(SPACE_MARGIN_BYTES)} MiB more")


def check_train(cfg: RunConfig, registry: Registry, run_dir: Path, *, resume: bool) -> RunConfig:
    """Everything ``bicycle train`` can check before reading data: the resolved config and the run dir."""
    cfg = resolve(cfg, registry)
    check_not_busy(run_dir)
    ckpts = run_dir / "checkpoints"
    if not resume and ((ckpts / "latest").exists() or any(ckpts.glob("step_*.safetensors"))):
        raise ConfigError(f"run dir {run_dir} already holds a run: continue it with --resume {run_dir}, "
                          f"or choose another --run-dir")
    flag = "--resume" if resume else "--run-dir"
    where = check_writable(run_dir, flag)
    check_room(where, cfg, registry, flag, run_dir, resume)
    return cfg


def check_inference(device: str, seed: int, out_dir: Path | None = None, json_path: Path | None = None,
                    references: Sequence[Path] = (), z_source: str = "prior", temperature: float = 1.0,
                    force: bool = False) -> None:
    """``bicycle sample`` / ``bicycle eval``: the device, the seed, --z-source and --temperature, the reference
    images and the output paths, before loading anything."""
    from bicycle.ops import pick_device
    from bicycle.arguments import check_seed
    from bicycle.inference.posterior import check_z_source

    check_z_source(z_source, temperature)
    pick_device(device)
    check_seed(seed, "--seed")
    for ref in references:
        if not ref.is_file():
            raise DataError(f"--reference {ref} does not exist")
    if out_dir is not None:
        check_output_folder(out_dir, "--out", force)
    if json_path is not None:
        check_output_file(json_path, "--json", force)


def check_sample(input_path: Path | None, data: str | None, samples: int, n_inputs: int, interpolate: int,
                 references: Sequence[Path], device: str, seed: int, out_dir: Path, z_source: str = "auto",
                 temperature: float = 1.0, force: bool = False) -> None:
    """``bicycle sample``'s flags, then :func:`check_inference`."""
    if input_path is not None and data is not None:
        raise ConfigError("give at most one of --input IMAGE_OR_DIR or --data NAME|PATH")
    if samples < 1 or n_inputs < 1:
        raise ConfigError("--samples and --inputs must be at least 1")
    if interpolate == 1 or interpolate < 0:
        raise ConfigError(f"--interpolate needs at least 2 frames, got {interpolate}")
    if interpolate and len(references) not in (0, 2):
        raise ConfigError(f"--interpolate walks between two --reference images; {len(references)} given")
    if interpolate and not references and samples < 2:
        raise ConfigError("--interpolate walks between the first two random codes: give --samples 2 or more")
    if references and z_source == "posterior":
        raise ConfigError("--z-source posterior draws random codes; --reference gives the codes instead: give one of them")
    check_inference(device, seed, out_dir=out_dir, references=references, z_source=z_source, temperature=temperature,
                    force=force)


def check_export(out: Path | None, onnx_path: Path | None, device: str, force: bool = False) -> None:
    """``bicycle export``: something to write, and paths that can be written."""
    from bicycle.ops import pick_device

    if out is None and onnx_path is None:
        raise ConfigError("nothing to export: give --out model.safetensors and/or --onnx model.onnx")
    pick_device(device)
    if out is not None:
        check_output_file(out, "--out", force, need=0)
    if onnx_path is not None:
        check_output_file(onnx_path, "--onnx", force, need=0)


def check_world(world: World, preset: str, run_dir: Path | None, resume_dir: Path | None,
                echo: Callable[[str], None]) -> tuple[Path | None, Path | None]:
    """``bicycle train`` under torchrun: one run dir for every rank and every restart (given, or named after
    torchrun's run id); a worker restarted by ``torchrun --max-restarts`` resumes that run dir by itself."""
    if not world.launched:
        return run_dir, resume_dir
    if run_dir is None and resume_dir is None:
        if not world.run_id:
            raise ConfigError("under torchrun, give --run-dir DIR (every rank and every restart must use the same "
                              "folder), or start torchrun with --standalone or --rdzv-id ID")
        run_dir = Path("runs") / f"{preset}-{world.run_id}"
    target = resume_dir or run_dir
    assert target is not None
    ckpts = target / "checkpoints"
    if world.restart > 0 and resume_dir is None and ckpts.is_dir() and (
            (ckpts / "latest").exists() or any(ckpts.glob("step_*.safetensors"))):
        echo(f"torchrun restart {world.restart}: resuming {target} from its latest checkpoint")
        return target, target
    return run_dir, resume_dir


def check_parallel(world: World, cfg: RunConfig) -> None:
    """Data parallelism: settings the ranks cannot share."""
    norms = {"--norm": cfg.net.norm, "--d-norm": cfg.net.d_norm, "--e-norm": cfg.net.e_norm}
    flag = next((f for f, v in norms.items() if v == "batch"), None)
    if world.launched and flag is not None:
        raise ConfigError(f"{flag} batch under torchrun would need SyncBatchNorm, which bicycle does not use: train "
                          f"with instance norm (the paper's) or in one process")
    if world.launched and cfg.loss.kl_free_bits > 0:
        raise ConfigError("--kl-free-bits under torchrun is not supported yet: the per-dimension KL would have to be "
                          "all-reduced before the floor")
