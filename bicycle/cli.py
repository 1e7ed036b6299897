"""``bicycle`` command line: a thin layer over the library. Errors become one clear line and a
non-zero exit (usage errors exit 2)."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from bicycle.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError
from bicycle.reporting import run_reporting

PRESET_NOTES = {
    "demo": "small and fast: 32 px shapes, calibrated to finish within 10 minutes on an idle 2-core CPU",
    "paper": "the paper's configuration: 256 px, unet256, z at all layers, batch 2, lr 2e-4",
}


_run = run_reporting


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bicycle")
def main() -> None:
    """bicycle: multimodal image-to-image translation (BicycleGAN)."""


# (flag, config key) for the flags that map 1:1 onto config keys.
_TRAIN_KEYS = {
    "data": "data.data", "model": "train.model", "backbone": "net.backbone", "inject": "net.inject",
    "encoder": "net.encoder", "nz": "net.nz", "image_size": "net.image_size", "batch_size": "train.batch_size",
    "steps": "train.steps", "seed": "train.seed", "device": "train.device", "impl": "train.impl",
    "norm": "net.norm", "upsample": "net.upsample", "ngf": "net.ngf", "nef": "net.nef", "ndf": "net.ndf",
    "dropout": "net.dropout", "gan_mode": "net.gan_mode", "direction": "data.direction",
    "load_size": "data.load_size", "flip": "data.flip", "lr": "optim.lr", "lr_d": "optim.lr_d",
    "decay_start": "optim.decay_start", "lambda_l1": "loss.l1",
    "lambda_gan": "loss.gan", "lambda_gan2": "loss.gan2",
    "lambda_kl": "loss.kl", "kl_warmup": "loss.kl_warmup", "lambda_z": "loss.z", "log_every": "train.log_every",
    "sample_every": "train.sample_every", "checkpoint_every": "train.checkpoint_every",
    "keep_checkpoints": "train.keep_checkpoints",
    "cuda_graphs": "train.cuda_graphs", "precision": "train.precision", "compile": "train.compile",
    "bad_images": "data.bad_images", "kl_free_bits": "loss.kl_free_bits", "lambda_ms": "loss.mode_seeking", "d_layers": "net.d_layers",
    "d_scales": "net.d_scales",
}


@main.command()
@click.option("--data", help="dataset name (see `bicycle plugins`) or a folder (pix2pix layout); an existing path wins")
@click.option("--model", type=click.Choice(["bicycle", "pix2pix", "cae-gan", "cvae-gan", "clr-gan"]))
@click.option("--backbone", help="generator backbone, e.g. unet, unet128, unet256")
@click.option("--inject", help="z-injection strategy: input, all, all-film (z also in the decoder), or a plugin's (bicycle plugins)")
@click.option("--encoder", type=click.Choice(["resnet", "conv"]))
@click.option("--nz", type=int, help="latent code size (8)")
@click.option("--image-size", type=int, help="square image size in px (>= 32)")
@click.option("--batch-size", type=int)
@click.option("--steps", type=int, help="training iterations")
@click.option("--seed", type=int)
@click.option("--preset", type=click.Choice(sorted(PRESET_NOTES)), default="demo", show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), help="default: runs/<preset>-<time>")
@click.option("--device", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="continue this run dir from its latest checkpoint")
@click.option("--dry-run", is_flag=True, help="print the resolved config and exit")
@click.option("--impl", type=click.Choice(["auto", "triton", "cpp", "ref"]), help="fused-op implementation")
@click.option("--norm", type=click.Choice(["instance", "batch", "none"]))
@click.option("--upsample", type=click.Choice(["basic", "bilinear"]))
@click.option("--ngf", type=int)
@click.option("--nef", type=int)
@click.option("--ndf", type=int)
@click.option("--d-layers", type=int, help="stride-2 layers of each PatchGAN scale (3; the original's 128-px D has 2)")
@click.option("--d-scales", type=int, help="scales of each multi-scale discriminator (2)")
@click.option("--dropout/--no-dropout", default=None)
@click.option("--gan-mode", type=click.Choice(["lsgan", "vanilla"]))
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]))
@click.option("--load-size", type=int, help="resize to this before random crops (folders)")
@click.option("--flip/--no-flip", default=None, help="random horizontal flips (folders)")
@click.option("--bad-images", type=click.Choice(["error", "skip"]),
              help="files the start-up check cannot decode: error (default) names them and stops; skip trains without them, listed in RUN/bad_images.txt")
@click.option("--lr", type=float)
@click.option("--lr-d", type=float, help="learning rate of D and D2 (default: --lr)")
@click.option("--decay-start", type=float, help="fraction of the steps after which the LR decays linearly to 0 (0.5)")
@click.option("--lambda-l1", type=float)
@click.option("--lambda-gan", type=float, help="weight of the encoded branch's GAN loss (D; 1)")
@click.option("--lambda-gan2", type=float, help="weight of the random-z branch's GAN loss (D2; 1)")
@click.option("--lambda-kl", type=float)
@click.option("--kl-warmup", type=float, help="ramp lambda_KL up linearly over this fraction of the steps (0: constant, as the paper)")
@click.option("--lambda-z", type=float)
@click.option("--kl-free-bits", type=float, help="floor, in nats, on each dimension's batch-mean KL (free bits; 0: off)")
@click.option("--lambda-ms", type=float, help="mode seeking (MSGAN): push G(A, z_rand) away from G(A, z_enc) (0: off, as the paper)")
@click.option("--log-every", type=int)
@click.option("--sample-every", type=int)
@click.option("--checkpoint-every", type=int)
@click.option("--keep-checkpoints", type=int, help="how many of the newest checkpoints a run keeps (3)")
@click.option("--cuda-graphs/--no-cuda-graphs", default=None,
              help="replay each iteration from a CUDA graph (default: on for CUDA devices, eager on CPU)")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), help="bf16: autocast + channels_last (opt-in)")
@click.option("--compile/--no-compile", default=None, help="torch.compile the networks")
@click.option("--nproc", type=int, help="data parallel: start N processes through torchrun (one per GPU, or gloo on the CPU)")
@click.pass_context
def train(ctx: click.Context, preset: str, run_dir: Path | None, resume_dir: Path | None, dry_run: bool,
          nproc: int | None, **flags) -> None:
    """Train a model; the no-flag default is the demo preset on the built-in `shapes` dataset. Under
    `torchrun --nproc-per-node N -m bicycle train ...` (or with --nproc N) one model trains data-parallel."""
    if nproc is not None:
        from bicycle.launch import launch
        _run(launch, nproc, sys.argv[1:], run_dir, preset, dry_run)
        return
    _run(_train, ctx, preset, run_dir, resume_dir, dry_run, flags)


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name == "COMMANDLINE"


def _train(ctx: click.Context, preset: str, run_dir: Path | None, resume_dir: Path | None, dry_run: bool, flags: dict) -> None:
    from bicycle.plugins import get_plugins
    from bicycle.preflight import check_parallel, check_resume_steps, check_train, check_world
    from bicycle.train.distributed import world_from_env

    world = world_from_env()
    echo = click.echo if world.main else (lambda *a, **k: None)  # rank 0 speaks for a torchrun job
    run_dir, resume_dir = check_world(world, preset, run_dir, resume_dir, echo)
    registry = get_plugins().registry
    if resume_dir is not None:
        from bicycle.io import load_checkpoint
        ckpt = load_checkpoint(resume_dir)
        cfg = _resumed_config(ctx, preset, run_dir, resume_dir, ckpt.config, flags)
        check_resume_steps(cfg, ckpt.step)
        echo(f"bicycle train: resuming {resume_dir} (preset {cfg.preset}) at step {ckpt.step} of {cfg.train.steps}")
        run_dir = resume_dir
    else:
        cfg = _new_config(preset, flags, registry)
        echo(f"bicycle train: preset {preset} ({PRESET_NOTES[preset]})")
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


def _new_config(preset: str, flags: dict, registry):
    from bicycle.config import PRESETS, preset_config, validate

    overrides = {_TRAIN_KEYS[k]: v for k, v in flags.items() if v is not None}
    backbone = overrides.get("net.backbone")
    if backbone and "net.image_size" not in overrides:
        implied = registry.backbone(backbone).default_image_size
        if implied:
            overrides["net.image_size"] = implied
    spec = registry.backbone(backbone or PRESETS[preset].net.backbone)
    return validate(preset_config(preset, overrides, decoder_points=spec.decoder_points))


def _resumed_config(ctx: click.Context, preset: str, run_dir: Path | None, resume_dir: Path, stored, flags: dict):
    """The stored config with the flags a resume may change; a different preset or run dir is an error."""
    from bicycle.config import replace, validate
    from bicycle.preflight import resume_config

    if run_dir is not None and run_dir.absolute() != resume_dir.absolute():
        raise ConfigError(f"--resume {resume_dir} continues that run in place; --run-dir {run_dir} names another "
                          f"folder (drop --run-dir, or copy the run there and resume that)")
    if _given(ctx, "preset") and preset != stored.preset:
        raise ConfigError(f"--resume may only change --steps, the device and logging flags; differs: preset "
                          f"(run: {stored.preset!r}, requested: {preset!r})")
    given = {_TRAIN_KEYS[k] for k in flags if flags[k] is not None and _given(ctx, k)}
    requested = replace(stored, {k: flags[k2] for k2 in flags for k in [_TRAIN_KEYS[k2]] if k in given})
    return validate(resume_config(stored, requested, given))


@main.command()
@click.option("--checkpoint", required=True, help="a run dir (its latest checkpoint), a checkpoint or exported weights")
@click.option("--input", "input_path", type=click.Path(path_type=Path), help="an image or a folder of images (no ground truth)")
@click.option("--data", help="dataset name or folder: inputs with ground truth (val split); default: the checkpoint's own")
@click.option("--samples", type=int, default=8, show_default=True, help="outputs per input, each from a random z")
@click.option("--inputs", "n_inputs", type=int, default=8, show_default=True, help="inputs taken from the dataset")
@click.option("--reference", "references", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="a guide image (output domain): translate with its code instead of random z; repeatable")
@click.option("--interpolate", type=int, default=0, help="K frames per input walking z between two codes: a GIF and a PNG strip")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--z-source", type=click.Choice(["prior", "posterior"]), default="prior", show_default=True,
              help="random z from N(0, I) (the paper's) or from RUN/posterior.safetensors (bicycle fit-posterior RUN)")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="scale of the random codes' spread (the prior's std, the mixture's covariances by T^2)")
@click.option("--force", is_flag=True, help="replace the outputs of an earlier sample in --out")
def sample(checkpoint: str, input_path: Path | None, data: str | None, samples: int, n_inputs: int,
           references: tuple[Path, ...], interpolate: int, out: Path, seed: int, device: str, z_source: str,
           temperature: float, force: bool) -> None:
    """Write, per input, a grid (input, ground truth and encoded output when known, N random-z outputs)
    and the individual outputs; with --interpolate, an animated GIF and a strip per input."""
    from bicycle.preflight import check_sample
    from bicycle.sampling import run_sample
    _run(check_sample, input_path, data, samples, n_inputs, interpolate, references, device, seed, out,
         z_source=z_source, temperature=temperature, force=force)
    _run(run_sample, checkpoint, input_path, data, samples, n_inputs, out, seed, device, click.echo,
         references=references, interpolate=interpolate, z_source=z_source, temperature=temperature)


@main.command("eval")
@click.option("--checkpoint", required=True, help="a checkpoint file or a run dir (its latest checkpoint)")
@click.option("--data", help="dataset name or folder (default: the one the model was trained on)")
@click.option("--inputs", "n_inputs", type=int, default=100, show_default=True, help="M inputs")
@click.option("--samples", type=int, default=20, show_default=True, help="N random-z outputs per input")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the results here")
@click.option("--device", default="auto", show_default=True)
@click.option("--lpips-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="safetensors file: AlexNet features.* + LPIPS lin*.model.1.weight; adds diversity_lpips")
@click.option("--inception-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="safetensors file: pytorch-fid Inception-v3 (pt_inception-2015-12-05) state dict; adds fid")
@click.option("--z-source", type=click.Choice(["prior", "posterior"]), default="prior", show_default=True,
              help="random z from N(0, I) (the paper's protocol) or from RUN/posterior.safetensors")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="scale of the random codes' spread")
@click.option("--force", is_flag=True, help="replace an existing --json file")
def evaluate(checkpoint: str, data: str | None, n_inputs: int, samples: int, seed: int, json_path: Path | None,
             device: str, lpips_weights: Path | None, inception_weights: Path | None, z_source: str,
             temperature: float, force: bool) -> None:
    """Realism and diversity: oracle measures when the dataset has one, pixel diversity always; LPIPS
    diversity and FID with local weights (never downloaded)."""
    if samples < 1 or n_inputs < 1:
        raise click.UsageError("--samples and --inputs must be at least 1")
    from bicycle.evaluate import run_eval
    from bicycle.preflight import check_inference
    _run(check_inference, device, seed, json_path=json_path, z_source=z_source, temperature=temperature, force=force)
    _run(run_eval, checkpoint, data, n_inputs, samples, seed, json_path, device, click.echo,
         lpips_weights=lpips_weights, inception_weights=inception_weights, z_source=z_source,
         temperature=temperature)


@main.command()
def plugins() -> None:
    """List every registered component and the plugin it came from."""
    from bicycle.plugins import get_plugins
    p = _run(get_plugins)
    rows = p.registry.listing()
    width = max(len(r[1]) for r in rows)
    for kind in ("backbone", "injector", "dataset"):
        click.echo(f"{kind}s:")
        for k, name, plugin, desc in rows:
            if k == kind:
                click.echo(f"  {name:<{width}}  [{plugin}]  {desc}")
    click.echo("plugins loaded: " + ", ".join(p.plugin_names()))


@main.command()
def env() -> None:
    """Versions, device, which implementation each fused op uses and why, plugins loaded."""
    from bicycle.envreport import report
    for line in _run(report):
        click.echo(line)


def _attach_commands() -> None:
    """Commands that live beside their library code."""
    from bicycle.bench.command import bench
    from bicycle.export.command import export
    from bicycle.original.command import convert_original
    from bicycle.posterior_command import fit_posterior

    main.add_command(bench, "bench")
    main.add_command(export, "export")
    main.add_command(convert_original, "convert-original")
    main.add_command(fit_posterior, "fit-posterior")


_attach_commands()

if __name__ == "__main__":
    main()
