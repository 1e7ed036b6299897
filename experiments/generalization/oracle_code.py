"""How fast G and E can each learn a ``shapes`` variant's attributes on their own, with the other side given.

- ``g``: the demo recipe's G at ``--image-size`` trained alone on an oracle code, z = one-hot(fill) ++
  one-hot(background) (zero-padded to nz), with lambda_L1 * L1 only; at each check, the fraction of val inputs
  whose G(A, code) shows the right fill and background (the dataset's exact oracle) and the fills drawn.
- ``e``: the recipe's E trained alone to regress the same code from B (MSE on mu); at each check, the fraction
  of val images whose mu's argmax over the fill (background) slots is the true fill (background).

Both use the run's Adam settings (lr, betas) and ``--batch`` images per update: 1 is what each network sees per
step in the demo recipe above 32 px (batch 2 = one encoded + one random image). If G learns the attributes in a
few hundred updates and E takes many more, the code, not the generator, is the slow side of a full run
(experiments/generalization/README.md, "Which values G loses, and when"). Not a CI test.

    python experiments/generalization/oracle_code.py --data shapes-unequal [--image-size 128] [--nets g e] [--batch 1]
        [--steps 900] [--checks 4] [--inject NAME] [--beta1 B] [--set KEY=VALUE ...] [--json OUT]

The recipe is the demo preset at ``--image-size`` (at 128 px lr 2e-3 since 2026-12-02; every record in
experiments/generalization/results/oracle128/ was made before, at 1e-3 unless its ``set`` says otherwise; new results record their lr).

``--set optim.beta2=0.99`` (repeatable) overrides any config key of the recipe (the value read as JSON, else
as a string).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bicycle.build import build_networks, resolve
from bicycle.config import preset_config
from bicycle.data.shape_variants import VARIANTS, ShapeVariantDataset
from bicycle.plugins import get_plugins

VAL = 200
CHUNK = 50


def oracle_codes(ds: ShapeVariantDataset, idx: list[int], nz: int) -> Tensor:
    """[len(idx), nz]: one-hot fill in the first len(fills) slots, one-hot background in the next ones."""
    nf, nb = len(ds.fills), len(ds.backgrounds)
    if nf + nb > nz:
        raise SystemExit(f"the oracle code needs nz >= {nf + nb}, the run has {nz}")
    z = torch.zeros(len(idx), nz)
    for row, i in enumerate(idx):
        p = ds.params(i)
        z[row, int(p["fill"])] = 1.0
        z[row, nf + int(p["background"])] = 1.0
    return z


def _labels(ds: ShapeVariantDataset, idx: list[int]) -> tuple[Tensor, Tensor]:
    return (torch.tensor([int(ds.params(i)["fill"]) for i in idx]),
            torch.tensor([int(ds.params(i)["background"]) for i in idx]))


@torch.no_grad()
def check_g(G: torch.nn.Module, val: ShapeVariantDataset, nz: int) -> dict:
    idx = list(range(len(val)))
    a, _ = val.get_batch(idx)
    code = oracle_codes(val, idx, nz)
    G.eval()
    out = torch.cat([G(a[i:i + CHUNK], code[i:i + CHUNK]) for i in range(0, len(idx), CHUNK)])
    G.train()
    modes, (fill, bg), nb = val.mode_of(a, out), _labels(val, idx), len(val.backgrounds)
    return {"fill": float((modes // nb == fill).float().mean()), "background": float((modes % nb == bg).float().mean()),
            "fills_drawn": torch.bincount(modes // nb, minlength=len(val.fills)).tolist()}


@torch.no_grad()
def check_e(E: torch.nn.Module, val: ShapeVariantDataset) -> dict:
    idx = list(range(len(val)))
    _, b = val.get_batch(idx)
    mu = torch.cat([E(b[i:i + CHUNK])[0] for i in range(0, len(idx), CHUNK)])
    (fill, bg), nf, nb = _labels(val, idx), len(val.fills), len(val.backgrounds)
    return {"fill": float((mu[:, :nf].argmax(1) == fill).float().mean()),
            "background": float((mu[:, nf:nf + nb].argmax(1) == bg).float().mean())}


def parse_override(item: str) -> tuple[str, Any]:
    """"optim.beta2=0.99" -> ("optim.beta2", 0.99); a value that is not JSON stays a string."""
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def train_alone(net: str, data: str, size: int, batch: int, steps: int, checks: int, seed: int,
                overrides: dict[str, Any] | None = None) -> list[dict]:
    """Train G (``net`` = "g") or E ("e") of the demo recipe (``overrides``: other values of its config keys)
    alone; the checks' results in order."""
    plugins = get_plugins()
    backbone = f"unet{size}" if size in (128, 256) else "unet"
    cfg = preset_config("demo", {"data.data": data, "net.image_size": size, "net.backbone": backbone,
                                 "train.seed": seed, "train.device": "cpu", **(overrides or {})})
    train = ShapeVariantDataset(data, size, "train", seed)
    val = ShapeVariantDataset(data, size, "val", seed, length=VAL)
    cfg = resolve(cfg, plugins.registry, train)
    torch.manual_seed(seed)
    nets = build_networks(cfg, plugins.registry, inference=True)
    model = nets.G if net == "g" else nets.E
    if model is None:
        raise SystemExit("the recipe has no encoder")
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
    g = torch.Generator().manual_seed(seed)
    every = max(1, steps // checks)
    results = []
    for step in range(1, steps + 1):
        idx = torch.randint(len(train), (batch,), generator=g).tolist()
        a, b = train.get_batch(idx)
        code = oracle_codes(train, idx, cfg.net.nz)
        if net == "g":
            loss = cfg.loss.l1 * (model(a, code) - b).abs().mean()
        else:
            loss = (model(b)[0] - code).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            r = {"net": net, "inject": cfg.net.inject, "lr": cfg.optim.lr, "beta1": cfg.optim.beta1,
                 **({"set": overrides} if overrides else {}), "batch": batch, "step": step, "samples": step * batch,
                 **(check_g(model, val, cfg.net.nz) if net == "g" else check_e(model, val))}
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, choices=sorted(VARIANTS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--nets", nargs="+", choices=["g", "e"], default=["g", "e"])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--checks", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inject", help="G's injector (default: the recipe's)")
    p.add_argument("--beta1", type=float, help="Adam beta1 (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config key's value")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    given = {"net.inject": a.inject, "optim.beta1": a.beta1}
    overrides = {**{k: v for k, v in given.items() if v is not None}, **dict(parse_override(item) for item in a.set)}
    results = [r for net in a.nets for batch in a.batch
               for r in train_alone(net, a.data, a.image_size, batch, a.steps, a.checks, a.seed, overrides)]
    if a.json:
        a.json.write_text(json.dumps({"data": a.data, "image_size": a.image_size, "seed": a.seed,
                                      "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
