"""``bicycle demo``: a local web page over a trained model, a thin layer over :func:`bicycle.demo.serve`."""
from __future__ import annotations

import click

from bicycle.commands.options import weights_option
from bicycle.commands.reporting import reports_errors


@click.command("demo")
@click.argument("run_or_weights")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="the address to serve on (the default is this machine only; 0.0.0.0 opens it to the network)")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--invert", is_flag=True, help="draw in the opposite polarity to the training inputs'")
@weights_option
@reports_errors
def demo(run_or_weights: str, host: str, port: int, device: str, invert: bool, weights: str) -> None:
    """Serve a web page to explore a trained model (a run dir, a checkpoint or exported weights): draw or upload an
    input, see N outputs for a seed with the z source and temperature of your choice, take a reference image's
    style, steer one output with a slider per latent dimension and walk between two outputs as a GIF. Needs
    the demo extra: pip install 'bicycle[demo]'."""
    from bicycle.demo import serve

    serve(run_or_weights, host=host, port=port, device=device, invert=invert, weights=weights, echo=click.echo)
