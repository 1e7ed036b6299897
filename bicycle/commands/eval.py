"""``bicycle eval``: realism and diversity of a trained model, a thin layer over
:func:`bicycle.inference.evaluate.run_eval`."""
from __future__ import annotations

from pathlib import Path

import click

from bicycle.commands.options import weights_option
from bicycle.commands.reporting import reports_errors


@click.command("eval")
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
@weights_option
@click.option("--force", is_flag=True, help="replace an existing --json file")
@reports_errors
def evaluate(checkpoint: str, data: str | None, n_inputs: int, samples: int, seed: int, json_path: Path | None,
             device: str, lpips_weights: Path | None, inception_weights: Path | None, z_source: str,
             temperature: float, weights: str, force: bool) -> None:
    """Realism and diversity: oracle measures when the dataset has one, pixel diversity always; LPIPS
    diversity and FID with local weights (never downloaded)."""
    if samples < 1 or n_inputs < 1:
        raise click.UsageError("--samples and --inputs must be at least 1")
    from bicycle.inference.evaluate import run_eval
    from bicycle.commands.preflight import check_inference

    check_inference(device, seed, json_path=json_path, z_source=z_source, temperature=temperature, force=force)
    run_eval(checkpoint, data, n_inputs, samples, seed, json_path, device, click.echo,
             lpips_weights=lpips_weights, inception_weights=inception_weights, z_source=z_source,
             temperature=temperature, weights=weights)
