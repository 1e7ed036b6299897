"""The ``bicycle convert-original`` command (attached in :mod:`bicycle.cli` with ``main.add_command``)."""
from __future__ import annotations

from pathlib import Path

import click

from bicycle.commands.reporting import reports_errors

_PATH = click.Path(dir_okay=True, path_type=Path)


@click.command("convert-original")
@click.option("--G", "g_path", type=_PATH, required=True, help="the original's latest_net_G.pth (a state dict)")
@click.option("--E", "e_path", type=_PATH, help="its latest_net_E.pth; without it the run is a pix2pix model (G(A, z), no encoder)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the bicycle run dir to write (new or empty)")
@click.option("--netG", "netG", type=click.Choice(["unet_128", "unet_256"]), help="checked against G's tensors")
@click.option("--netE", "netE", type=click.Choice(["resnet_128", "resnet_256", "conv_128", "conv_256"]),
              help="checked against E's tensors")
@click.option("--where_add", type=click.Choice(["input", "all"]), help="checked against G's tensors")
@click.option("--upsample", type=click.Choice(["basic", "bilinear"]), help="checked against G's tensors")
@click.option("--norm", type=click.Choice(["instance", "batch", "none"]),
              help="checked against the tensors; decides where they cannot tell (default: instance)")
@click.option("--nl", type=click.Choice(["relu", "lrelu", "elu"]), help="G's up-path non-linearity: relu only")
@click.option("--input_nc", type=int, help="checked against G's tensors (needed, or --nz, for a where_add input G without --E)")
@click.option("--output_nc", type=int, help="checked against G's tensors")
@click.option("--nz", type=int, help="checked against the tensors (default where they cannot tell: 8)")
@click.option("--ngf", type=int, help="checked against G's tensors")
@click.option("--nef", type=int, help="checked against E's tensors")
@click.option("--crop_size", type=int, help="image size (default: 256 for *_256 encoders, 128 for *_128; without E, "
              "128 for unet_128 and 256 for unet_256); any size the U-Net takes, e.g. 512 with unet_256")
@click.option("--load_size", type=int, help="resize to this before crops (data.load_size)")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), help="data.direction (default AtoB)")
@click.option("--dataroot", help="the dataset folder (pix2pix layout); without it, commands that need data want --data")
@click.option("--use_dropout", is_flag=True, help="net.dropout for later training (inference never drops out)")
@click.option("--no_flip", is_flag=True, help="data.flip off")
@reports_errors
def convert_original(g_path: Path, e_path: Path | None, out: Path, **flags) -> None:
    """Convert the original BicycleGAN's released G (and E) state dicts (github.com/junyanz/BicycleGAN) into
    a bicycle run dir for `bicycle sample`, `eval` and `export`. The tensors determine the architecture; the
    original's flags, where given, must agree with them."""
    from bicycle.original.convert import OriginalFlags, convert

    result = convert(g_path, e_path, out, OriginalFlags(**flags), echo=click.echo)
    n, t = result.config.net, result.config.train
    enc = f", E {n.encoder} (nef {n.nef})" if t.model != "pix2pix" else ""
    click.echo(f"converted {', '.join(str(p) for p in (g_path, e_path) if p is not None)} -> {result.run_dir}: model "
               f"{t.model}, G {n.backbone} (inject {n.inject}, upsample {n.upsample}, ngf {n.ngf}, {n.in_channels}->"
               f"{n.out_channels} channels, nz {n.nz}, norm {n.norm}){enc}, {n.image_size} px")
