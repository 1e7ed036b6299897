"""Fixtures for ``bicycle convert-original``: the original BicycleGAN's networks, randomly initialised
(seeded), their state dicts as the original saves them, and their outputs, in safetensors.

    python tools/original_fixtures.py --original /path/to/BicycleGAN --out tests/fixtures/original

``--original`` is a checkout of https://github.com/junyanz/BicycleGAN (only ``models/networks.py`` is
imported, from that path; it imports nothing but torch and the standard library). The original's code
is fetched, never committed here.

Every file holds the original's state dicts under ``G.<name>`` / ``E.<name>`` (``net.state_dict()`` of
the bare module, CPU, exactly what ``torch.save`` writes in the original's ``save_networks``) and, in
eval mode (as the original's test.py runs them; dropout off):

* G files: ``A`` (uint8 [1, C, S, S]; the input is ``A / 127.5 - 1``), ``z`` (float32 [1, nz]) and
  ``out`` = G(A, z) at the rows ``rows`` and columns ``cols``: every second row and column plus the last
  ones (all four borders included; a quarter of the pixels, to keep the files under 2 MB in all);
* E files: ``B`` (uint8 [1, C, S, S]) and ``mu``, ``logvar`` = E(B / 127.5 - 1).

The metadata (strings) names the original's flags each network was built with. The weights are
re-drawn after the original's own init (which zeroes every bias and draws tiny weights) so that every
tensor, biases and BatchNorm statistics included, matters to the outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

NZ = 5

# name -> original flags. G: unet_128 at 128 px (input_nc 3), unet_256 at 256 px (input_nc 1); output_nc 1.
G_FIXTURES = {
    f"g_{net}_{where}_{up}": dict(netG=net, where_add=where, upsample=up, norm="instance", ngf=1,
                                  input_nc=3 if net == "unet_128" else 1, output_nc=1, nz=NZ,
                                  crop_size=128 if net == "unet_128" else 256)
    for net in ("unet_128", "unet_256") for where in ("input", "all") for up in ("basic", "bilinear")
}
E_FIXTURES = {
    f"e_{net}": dict(netE=net, norm="instance", nef=2, output_nc=1, nz=NZ, crop_size=int(net[-3:]))
    for net in ("resnet_128", "resnet_256", "conv_128", "conv_256")
}
# G and E together, for the norms other than the released models' instance norm.
PAIR_FIXTURES = {
    "pair_batch": (dict(netG="unet_128", where_add="all", upsample="bilinear", norm="batch", ngf=2, input_nc=1,
                        output_nc=2, nz=NZ, crop_size=128),
                   dict(netE="resnet_128", norm="batch", nef=2, output_nc=2, nz=NZ, crop_size=128)),
    "pair_none": (dict(netG="unet_128", where_add="input", upsample="basic", norm="none", ngf=1, input_nc=1,
                       output_nc=1, nz=NZ, crop_size=128),
                  dict(netE="resnet_128", norm="none", nef=2, output_nc=1, nz=NZ, crop_size=128)),
}
# The weights of these two, saved as PyTorch < 0.4 saved InstanceNorm layers (with running statistics).
OLD_PYTORCH = ("g_unet_256_all_basic", "e_resnet_256")


def load_networks_module(original: Path):
    path = original / "models" / "networks.py"
    if not path.is_file():
        sys.exit(f"{path} not found: --original must be a checkout of github.com/junyanz/BicycleGAN")
    spec = importlib.util.spec_from_file_location("bicyclegan_original_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module, hashlib.sha256(path.read_bytes()).hexdigest()


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # define_G/define_E print "initialize network with ..."
        return fn(*args, **kwargs)


def redraw(net: nn.Module, gen: torch.Generator) -> None:
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2); BatchNorm affine and running statistics random too."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                w = m.weight
                fan = w[0].numel() if not isinstance(m, nn.ConvTranspose2d) else w.shape[0] * w[0, 0].numel() / 4
                w.copy_(torch.randn(w.shape, generator=gen) / fan ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=gen)))


def image_u8(channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random picture (low-frequency noise, upsampled) with some pixel noise: uint8 [1, C, S, S]."""
    low = torch.rand(1, channels, 8, 8, generator=gen)
    img = nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.08 * torch.randn(img.shape, generator=gen)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def to_unit(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1


def check_instance_norms(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.InstanceNorm2d):
            assert not m.affine and not m.track_running_stats and m.running_mean is None, m


def check_eval_deterministic(fn, net: nn.Module) -> torch.Tensor:
    net.eval()
    assert not any(m.training for m in net.modules())
    with torch.no_grad():
        first, second = fn(), fn()
    assert torch.equal(first if isinstance(first, torch.Tensor) else first[0],
                       second if isinstance(second, torch.Tensor) else second[0]), "eval mode is not deterministic"
    return first


def build_g(networks, spec: dict, gen: torch.Generator) -> nn.Module:
    G = quiet(networks.define_G, spec["input_nc"], spec["output_nc"], spec["nz"], spec["ngf"], netG=spec["netG"],
              norm=spec["norm"], nl="relu", use_dropout=True, init_type="xavier", init_gain=0.02, gpu_ids=[],
              where_add=spec["where_add"], upsample=spec["upsample"])
    want = networks.G_Unet_add_all if spec["where_add"] == "all" else networks.G_Unet_add_input
    assert type(G) is want, type(G)
    depth = {"unet_128": 7, "unet_256": 8}[spec["netG"]]
    downs = [m for m in G.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(downs) == depth, (len(downs), depth)
    dropouts = [m for m in G.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == depth - 5, len(dropouts)  # built with --use_dropout, as the released models were trained
    ups = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == (depth if spec["upsample"] == "basic" else 0)
    check_instance_norms(G)
    redraw(G, gen)
    return G


def build_e(networks, spec: dict, gen: torch.Generator) -> nn.Module:
    E = quiet(networks.define_E, spec["output_nc"], spec["nz"], spec["nef"], netE=spec["netE"], norm=spec["norm"],
              nl="lrelu", init_type="xavier", init_gain=0.02, gpu_ids=[], vaeLike=True)
    want = networks.E_ResNet if spec["netE"].startswith("resnet") else networks.E_NLayers
    assert type(E) is want, type(E)
    check_instance_norms(E)
    redraw(E, gen)
    return E


def g_tensors(G: nn.Module, spec: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    s = spec["crop_size"]
    a = image_u8(spec["input_nc"], s, gen)
    z = torch.randn(1, spec["nz"], generator=gen)
    trained = copy.deepcopy(G)  # train mode: dropout on (and BatchNorm would update its statistics: a copy)
    with torch.no_grad():
        trained.train()
        dropped = trained(to_unit(a), z)
    out = check_eval_deterministic(lambda: G(to_unit(a), z), G)
    assert not torch.equal(dropped, out), "dropout had no effect in train mode"  # so eval really turned it off
    assert out.shape == (1, spec["output_nc"], s, s)
    assert 0.05 < float(out.abs().mean()) < 0.95, float(out.abs().mean())  # neither ~0 nor saturated
    idx = torch.cat([torch.arange(0, s, 2), torch.tensor([s - 1])])
    return {"A": a, "z": z, "rows": idx, "cols": idx.clone(), "out": out[:, :, idx][:, :, :, idx].contiguous()}


def e_tensors(E: nn.Module, spec: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    b = image_u8(spec["output_nc"], spec["crop_size"], gen)
    mu, logvar = check_eval_deterministic(lambda: E(to_unit(b)), E)
    assert mu.shape == logvar.shape == (1, spec["nz"])
    return {"B": b, "mu": mu, "logvar": logvar}


def state(prefix: str, net: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}


def meta(kind: str, spec: dict, common: dict) -> dict[str, str]:
    return {f"{kind}.{k}": str(v) for k, v in spec.items()} | common


def old_pytorch_state(networks, net: nn.Module, spec: dict, kind: str, gen: torch.Generator,
                      batches_tracked: bool) -> dict[str, torch.Tensor]:
    """``net``'s weights in a copy whose InstanceNorm layers track running statistics, as every InstanceNorm did
    before PyTorch 0.4 (running_mean, running_var; 0.4.0 added num_batches_tracked), the statistics gathered by
    a few forward passes in train mode. The original's loader drops them; this checks that it then computes
    what ``net`` computes."""
    old_norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True)
    relu = networks.get_non_linearity("relu")
    lrelu = networks.get_non_linearity("lrelu")
    if kind == "G":
        depth = {"unet_128": 7, "unet_256": 8}[spec["netG"]]
        cls = networks.G_Unet_add_all if spec["where_add"] == "all" else networks.G_Unet_add_input
        old = cls(spec["input_nc"], spec["output_nc"], spec["nz"], depth, spec["ngf"], norm_layer=old_norm,
                  nl_layer=relu, use_dropout=True, upsample=spec["upsample"])
        feed = lambda: old(to_unit(image_u8(spec["input_nc"], spec["crop_size"], gen)),  # noqa: E731
                           torch.randn(1, spec["nz"], generator=gen))
    else:
        blocks = int(spec["netE"].split("_")[1] == "256") + 4
        old = networks.E_ResNet(spec["output_nc"], spec["nz"], spec["nef"], n_blocks=blocks, norm_layer=old_norm,
                                nl_layer=lrelu, vaeLike=True)
        feed = lambda: old(to_unit(image_u8(spec["output_nc"], spec["crop_size"], gen)))  # noqa: E731
    missing, unexpected = old.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                               for k in missing), (missing, unexpected)
    old.train()
    with torch.no_grad():
        for _ in range(3):
            feed()
    sd = {k: v.clone() for k, v in old.state_dict().items()
          if batches_tracked or not k.endswith("num_batches_tracked")}
    # The original's loader (BaseModel.load_networks and its __patch_instance_norm_state_dict): these keys dropped,
    # the rest loaded strictly into a network built as the original builds it.
    patched = {k: v for k, v in sd.items() if k in net.state_dict()}
    assert set(sd) - set(patched) <= set(missing) and set(patched) == set(net.state_dict())
    fresh = copy.deepcopy(net)
    fresh.load_state_dict(patched, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())
    return {f"{kind}.{k}": v.contiguous() for k, v in sd.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", type=Path, required=True, help="a checkout of github.com/junyanz/BicycleGAN")
    p.add_argument("--out", type=Path, required=True, help="e.g. tests/fixtures/original")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(args.seed)  # the global RNG: dropout in the train-mode passes
    networks, digest = load_networks_module(args.original)
    common = {"format": "bicycle-original-fixture/1", "networks_py_sha256": digest, "torch": torch.__version__,
              "seed": str(args.seed)}
    args.out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    nets: dict[str, tuple[nn.Module, dict]] = {}

    def write(name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        path = args.out / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        written[name] = path.stat().st_size

    for i, (name, spec) in enumerate(G_FIXTURES.items()):
        gen = torch.Generator().manual_seed(args.seed * 1000 + i)
        G = build_g(networks, spec, gen)
        nets[name] = (G, spec)
        write(name, state("G", G) | g_tensors(G, spec, gen), meta("G", spec, common))
    for i, (name, spec) in enumerate(E_FIXTURES.items()):
        gen = torch.Generator().manual_seed(args.seed * 1000 + 100 + i)
        E = build_e(networks, spec, gen)
        nets[name] = (E, spec)
        write(name, state("E", E) | e_tensors(E, spec, gen), meta("E", spec, common))
    for i, (name, (gspec, espec)) in enumerate(PAIR_FIXTURES.items()):
        gen = torch.Generator().manual_seed(args.seed * 1000 + 200 + i)
        G, E = build_g(networks, gspec, gen), build_e(networks, espec, gen)
        tensors = state("G", G) | state("E", E) | g_tensors(G, gspec, gen) | e_tensors(E, espec, gen)
        write(name, tensors, meta("G", gspec, common) | meta("E", espec, common))
    gen = torch.Generator().manual_seed(args.seed * 1000 + 300)
    (G, gspec), (E, espec) = nets[OLD_PYTORCH[0]], nets[OLD_PYTORCH[1]]
    tensors = old_pytorch_state(networks, G, gspec, "G", gen, batches_tracked=False) | \
        old_pytorch_state(networks, E, espec, "E", gen, batches_tracked=True)
    write("old_pytorch_instance_stats", tensors,
          meta("G", gspec, common) | meta("E", espec, common) | {"G.from": OLD_PYTORCH[0], "E.from": OLD_PYTORCH[1]})
    total = sum(written.values())
    print(json.dumps({"files": written, "total_bytes": total}, indent=1))
    if total >= 2 * 1024 * 1024:
        sys.exit(f"fixtures total {total} bytes, over 2 MiB")


if __name__ == "__main__":
    main()
