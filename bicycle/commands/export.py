"""``bicycle export``: a thin layer over :mod:`bicycle.export.weights` and :mod:`bicycle.export.onnx`."""
from __future__ import annotations

from pathlib import Path

import click

from bicycle.commands.options import weights_option
from bicycle.commands.reporting import reports_errors

MIB = 2**20


@click.command("export")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="inference weights: G, E and the config (safetensors), for bicycle.load and bicycle sample")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="dtype of the weights in --out (loaded as float32)")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path),
              help="G(A, z) as ONNX (dynamic batch), E beside it as <name>.encoder.onnx; checked with onnxruntime")
@weights_option
@click.option("--force", is_flag=True, help="replace an existing --out / --onnx file")
@reports_errors
def export(run: Path, out: Path | None, dtype: str, onnx_path: Path | None, weights: str, force: bool) -> None:
    """Export a trained model (RUN: a run dir, a checkpoint or exported weights) for inference."""
    from bicycle.commands.preflight import check_export

    check_export(out, onnx_path, "cpu", force)
    if out is not None:
        from bicycle.export.weights import export_weights
        r = export_weights(run, out, dtype, weights)
        click.echo(f"wrote {out}: {r['bytes'] / MIB:.2f} MiB ({dtype}, {r['weights']} weights, step {r['step']}); "
                   f"{r['source']} is {r['source_bytes'] / MIB:.2f} MiB ({100 * r['bytes'] / r['source_bytes']:.0f}%); "
                   + (f"with the run's posterior ({r['posterior_components']} components) for --z-source posterior"
                      if r["posterior_components"] else "no posterior (none fitted for this step): --z-source prior only"))
    if onnx_path is not None:
        _onnx(run, onnx_path, weights)


def _onnx(run: Path, path: Path, weights: str) -> dict:
    from bicycle.export.onnx import export_onnx
    from bicycle.inference.loading import load_model
    from bicycle.plugins import get_plugins

    ckpt, nets, _ = load_model(run, "cpu", weights)
    plugin = get_plugins().registry.plugin_of("backbone", ckpt.config.net.backbone)
    return export_onnx(nets, ckpt.config, path, backbone_plugin=plugin, check=True, echo=click.echo, step=ckpt.step)
