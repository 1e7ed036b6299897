"""``bicycle`` command line: a thin layer over the library. Errors become one clear line and a
non-zero exit (usage errors exit 2)."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from bicycle.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, ConfigError
from bicycle.commands.train import train
from bicycle.reporting import run_reporting


_run = run_reporting


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bicycle")
def main() -> None:
    """bicycle: multimodal image-to-image translation (BicycleGAN)."""


main.add_command(train)


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
def sample(checkpoint: str, input_path: Path | None, data: str | None, samples: int, n_inputs: int,
           references: tuple[Path, ...], interpolate: int, out: Path, seed: int, device: str, z_source: str,
           temperature: float) -> None:
    """Write, per input, a grid (input, ground truth and encoded output when known, N random-z outputs)
    and the individual outputs; with --interpolate, an animated GIF and a strip per input."""
    from bicycle.preflight import check_sample
    from bicycle.sampling import run_sample
    _run(check_sample, input_path, data, samples, n_inputs, interpolate, references, device, seed, out,
         z_source=z_source, temperature=temperature)
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
def evaluate(checkpoint: str, data: str | None, n_inputs: int, samples: int, seed: int, json_path: Path | None,
             device: str, lpips_weights: Path | None, inception_weights: Path | None, z_source: str,
             temperature: float) -> None:
    """Realism and diversity: oracle measures when the dataset has one, pixel diversity always; LPIPS
    diversity and FID with local weights (never downloaded)."""
    if samples < 1 or n_inputs < 1:
        raise click.UsageError("--samples and --inputs must be at least 1")
    from bicycle.evaluate import run_eval
    from bicycle.preflight import check_inference
    _run(check_inference, device, seed, json_path=json_path, z_source=z_source, temperature=temperature)
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
