"""``bicycle sample``: grids and outputs of a trained model, a thin layer over :func:`bicycle.inference.sample.run_sample`."""
from __future__ import annotations

from pathlib import Path

import click

from bicycle.commands.options import weights_option
from bicycle.inference.posterior import Z_SOURCES
from bicycle.commands.reporting import reports_errors


@click.command("sample")
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
@click.option("--z-source", type=click.Choice(Z_SOURCES), default="auto", show_default=True,
              help="random z from N(0, I) (prior, the paper's), from the aggregate posterior fitted for this checkpoint "
                   "(posterior: RUN/posterior.safetensors or the one exported weights carry; bicycle fit-posterior "
                   "RUN), or from it when there is one, else the prior (auto; the output says which)")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="scale of the random codes' spread (the prior's std, the posterior's covariances by T^2)")
@weights_option
@click.option("--force", is_flag=True, help="replace the outputs of an earlier sample in --out")
@reports_errors
def sample(checkpoint: str, input_path: Path | None, data: str | None, samples: int, n_inputs: int,
           references: tuple[Path, ...], interpolate: int, out: Path, seed: int, device: str, z_source: str,
           temperature: float, weights: str, force: bool) -> None:
    """Write, per input, a grid (input, ground truth and encoded output when known, N random-z outputs)
    and the individual outputs; with --interpolate, an animated GIF and a strip per input."""
    from bicycle.inference.sample import run_sample
    from bicycle.commands.preflight import check_sample

    check_sample(input_path, data, samples, n_inputs, interpolate, references, device, seed, out,
                 z_source=z_source, temperature=temperature, force=force)
    run_sample(checkpoint, input_path, data, samples, n_inputs, out, seed, device, click.echo,
               references=references, interpolate=interpolate, z_source=z_source, temperature=temperature, weights=weights)
