"""``bicycle train``: the run options, one flag per config key (generated from the config), ``--set KEY=VALUE``."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from bicycle.commands.options import ConfigOption, GroupedCommand, config_options, flag_keys, requested_values
from bicycle.commands.reporting import reports_errors
from bicycle.config import PRESETS
from bicycle.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError


@click.command(cls=GroupedCommand)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="demo", show_default=True, cls=ConfigOption)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="default: runs/<preset>-<time>",
              cls=ConfigOption)
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="continue this run dir from its latest checkpoint", cls=ConfigOption)
@click.option("--dry-run", is_flag=True, help="print the resolved config and exit", cls=ConfigOption)
@click.option("--nproc", type=int, help="data parallel: start N processes through torchrun (one per GPU, or gloo on the CPU)",
              cls=ConfigOption)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", cls=ConfigOption,
              help="set any config key (as --dry-run names it), e.g. --set optim.beta1=0.9; repeatable; values "
                   "none and true/false where the key takes them")
@click.pass_context
@reports_errors
def train(ctx: click.Context, preset: str, run_dir: Path | None, resume_dir: Path | None, dry_run: bool,
          nproc: int | None, settings: tuple[str, ...], **flags: Any) -> None:
    """Train a model; the no-flag default is the demo preset on the built-in `shapes` dataset. Under
    `torchrun --nproc-per-node N -m bicycle train ...` (or with --nproc N) one model trains data-parallel."""
    if nproc is not None:
        from bicycle.train.launch import launch
        launch(nproc, sys.argv[1:], run_dir, preset, dry_run)
        return
    _train(ctx, preset, run_dir, resume_dir, dry_run, flags, settings)


train.params.extend(config_options())


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name == "COMMANDLINE"


def _train(ctx: click.Context, preset: str, run_dir: Path | None, resume_dir: Path | None, dry_run: bool,
           flags: dict[str, Any], settings: tuple[str, ...]) -> None:
    from bicycle.plugins import get_plugins
    from bicycle.commands.preflight import check_parallel, check_resume_steps, check_train, check_world
    from bicycle.train.distributed import world_from_env

    world = world_from_env()
    echo = click.echo if world.main else (lambda *a, **k: None)  # rank 0 speaks for a torchrun job
    run_dir, resume_dir = check_world(world, preset, run_dir, resume_dir, echo)
    registry = get_plugins().registry
    keys = flag_keys(ctx.command.params)
    if resume_dir is not None:
        from bicycle.io import load_checkpoint
        ckpt = load_checkpoint(resume_dir)
        given = {k: v for k, v in flags.items() if _given(ctx, k)}
        cfg = _resumed_config(ctx, preset, run_dir, resume_dir, ckpt.config, requested_values(given, keys, settings))
        check_resume_steps(cfg, ckpt.step)
        echo(f"bicycle train: resuming {resume_dir} (preset {cfg.preset}) at step {ckpt.step} of {cfg.train.steps}")
        run_dir = resume_dir
    else:
        cfg, band = _new_config(preset, requested_values(flags, keys, settings), registry)
        echo(f"bicycle train: preset {preset}, size band {band.name} ({band.summary})")
    if dry_run:
        from bicycle.build import resolve
        echo(resolve(cfg, registry).to_json())
        return
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_parallel(world, cfg)
    cfg = check_train(cfg, registry, run_dir, resume=resume_dir is not None)
    # The loop checks both splits of the data before it writes anything: bad data fails first.
    from bicycle.train.loop import train as run_training
    echo(f"model {cfg.train.model}, backbone {cfg.net.backbone}, inject {cfg.net.inject}, "
         f"{cfg.net.image_size} px, batch {cfg.train.batch_size}, {cfg.train.steps} steps, data {cfg.data.data}; "
         f"run dir {run_dir}")
    result = run_training(cfg, run_dir, resume=resume_dir is not None, echo=click.echo, world=world)
    echo(f"done in {result.seconds / 60:.1f} min; run dir {result.run_dir}")
    if result.interrupted:
        sys.exit(EXIT_TERMINATED if result.signal == signal.SIGTERM else EXIT_INTERRUPTED)


def _new_config(preset: str, overrides: dict[str, Any], registry):
    from bicycle.config import PRESETS, replace, resolve_preset, validate

    backbone = overrides.get("net.backbone")
    if backbone and "net.image_size" not in overrides:
        implied = registry.backbone(backbone).default_image_size
        if implied:
            overrides["net.image_size"] = implied
    spec = registry.backbone(backbone or PRESETS[preset].net.backbone)
    cfg, band = resolve_preset(preset, overrides, decoder_points=spec.decoder_points)
    cfg = replace(cfg, {k: None for k, v in overrides.items() if v is None}, keep_none=True)
    return validate(cfg), band


def _resumed_config(ctx: click.Context, preset: str, run_dir: Path | None, resume_dir: Path, stored,
                    requested: dict[str, Any]):
    """The stored config with the keys a resume may change; a different preset or run dir is an error."""
    from bicycle.config import replace, validate
    from bicycle.commands.preflight import resume_config

    if run_dir is not None and run_dir.absolute() != resume_dir.absolute():
        raise ConfigError(f"--resume {resume_dir} continues that run in place; --run-dir {run_dir} names another "
                          f"folder (drop --run-dir, or copy the run there and resume that)")
    if _given(ctx, "preset") and preset != stored.preset:
        raise ConfigError(f"--resume may only change --steps, the device and logging flags; differs: preset "
                          f"(run: {stored.preset!r}, requested: {preset!r})")
    return validate(resume_config(stored, replace(stored, requested, keep_none=True), set(requested)))
