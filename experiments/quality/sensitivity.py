#!/usr/bin/env python3
"""What a trained E, D and D2 respond to: validation B with one factor changed.

    python experiments/quality/sensitivity.py RUN [--inputs 24]

For a run trained on ``--data procedural:N``, each validation B is changed in one way, its noise and shading
kept: its fill replaced by the next palette fill, by the mean of the two (a blend, invalid), or shifted by
24 or 48 levels (invalid); its background replaced by the next one. Per change, the median over inputs of:
- ``e_shift``: how far E's mean moves, in units of the original's posterior sigma, |(mu' - mu) / sigma|
  (an encoder that carries a factor moves many sigmas when it changes; about 1 is noise);
- ``d``, ``d2``: D's and D2's LSGAN distance from "real", mean over patches and scales ((D(x) - 1)^2;
  a discriminator that sees the change scores an invalid B above the real one).
One JSON line on stdout. Calibration only: never a result (see README.md).
"""
from __future__ import annotations

import argparse
import json

import torch

from bicycle import io
from bicycle.build import build_eval_dataset, build_networks
from bicycle.data.procedural import LEVEL, ProceduralDataset
from bicycle.plugins import get_plugins


def d_distance(d: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N]: mean (D(x) - 1)^2 over patches and scales."""
    outs = d(x)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return sum(((o - 1) ** 2).mean(dim=(1, 2, 3)) for o in outs) / len(outs)


def changes(ds: ProceduralDataset, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A [n, 1, S, S] and {change: B' [n, 3, S, S]} (``real``: B itself)."""
    pairs = [ds.render(i) for i in range(n)]
    params = [ds.params(i) for i in range(n)]
    a, b = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    inside = ds.region_of(a)
    fill = torch.tensor([p["fill"] for p in params])
    bg = torch.tensor([p["background"] for p in params])
    old_fill, next_fill = ds.fills[fill], ds.fills[(fill + 1) % len(ds.fills)]
    old_bg, next_bg = ds.backgrounds[bg], ds.backgrounds[(bg + 1) % len(ds.backgrounds)]

    def refill(colour: torch.Tensor) -> torch.Tensor:
        return torch.where(inside, b - old_fill.view(-1, 3, 1, 1) + colour.view(-1, 3, 1, 1), b).clamp(-1, 1)

    shift = torch.tensor([1.0, -1.0, 1.0]) / LEVEL
    return a, {
        "real": b,
        "other fill": refill(next_fill),
        "blend of two fills": refill((old_fill + next_fill) / 2),
        "fill +24 levels": refill(old_fill + 24 * shift),
        "fill +48 levels": refill(old_fill + 48 * shift),
        "other background": torch.where(inside, b, b - old_bg.view(-1, 3, 1, 1) + next_bg.view(-1, 3, 1, 1))
        .clamp(-1, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--inputs", type=int, default=24)
    args = p.parse_args(argv)
    ckpt = io.load_checkpoint(args.run)
    nets = build_networks(ckpt.config, get_plugins().registry)
    io.load_networks(ckpt, nets)
    for _, m in nets.items():
        m.eval()
    ds = build_eval_dataset(ckpt.config, get_plugins().registry, model_channels=True)
    if not isinstance(ds, ProceduralDataset):
        raise SystemExit(f"{args.run}: trained on {ckpt.config.data.data!r}, not on --data procedural:N")
    a, variants = changes(ds, args.inputs)
    out: dict = {"run": args.run, "step": ckpt.step, "inputs": args.inputs}
    with torch.no_grad():
        mu0, logvar0 = nets.E(variants["real"])
        sigma0 = (0.5 * logvar0).exp()
        for name, b in variants.items():
            mu, _ = nets.E(b)
            out[name] = {"e_shift": ((mu - mu0) / sigma0).norm(dim=1).median().item(),
                         "d": d_distance(nets.D, b).median().item(), "d2": d_distance(nets.D2, b).median().item(),
                         "valid": ds.is_valid(a, b).float().mean().item()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
