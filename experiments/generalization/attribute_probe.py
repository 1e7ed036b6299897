"""Where a trained run loses an attribute of B: in E's code, in the noise of the sampled code, or in G.

For a run on a ``shapes`` variant (modes = fill x background), per attribute:

- ``mean_knn``: E's mean mu(B) carries it: 5-NN accuracy of the attribute from mu, val codes against train codes;
- ``sampled_knn``: the code G trains on in the cVAE branch, mu + sigma * eps, carries it (same probe, both sides
  sampled once);
- ``decoded``: G(A, mu(B)) reproduces it (the oracle's fill / background of the output, against the truth);
- ``decoded_histogram``: how often G drew each value (outputs the oracle cannot read left out), next to
  ``truth_histogram``.

Also per code dimension: the median sigma, the spread (std) of mu, and the share of mu's variance the fill
explains; and ``fill_lines``: whether G has a region for each fill anywhere near the encoder's codes. For each
fill f, the first 50 val codes are moved to the commonest fill's class mean (each keeps its offset from its own
fill's mean) and then t * (m_f - m_common) along the line to f's class mean, t in :data:`LINE_T`; the fills G draws
there (a histogram per t; t = 1 is f's own mean). Chance is 1 / (number of values). Not a CI test.

Several checkpoints (e.g. a run trained with ``--keep-checkpoints 10``) give the run's trajectory: one result per
checkpoint, in the order given (``--json`` then writes a list).

    python experiments/generalization/attribute_probe.py RUN_DIR_OR_CHECKPOINT... [--train 600] [--val 300] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from bicycle.data.shape_variants import VARIANTS, ShapeVariantDataset
from bicycle.inference.loading import load_model

BATCH = 50
LINE_T = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
LINE_INPUTS = 50


def knn_accuracy(train_codes: Tensor, train_labels: Tensor, val_codes: Tensor, val_labels: Tensor, k: int = 5) -> float:
    """Majority vote of the k nearest train codes [M, nz] (Euclidean) for each val code [V, nz]; ties go to the
    lowest label. -> the fraction of val labels [V] predicted."""
    nearest = torch.cdist(val_codes, train_codes).topk(k, largest=False).indices
    classes = int(max(train_labels.max(), val_labels.max())) + 1
    votes = torch.nn.functional.one_hot(train_labels[nearest], classes).sum(1)
    return float((votes.argmax(1) == val_labels).float().mean())


@torch.no_grad()
def _codes(nets, ds: ShapeVariantDataset) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> A [N, 1, S, S], mu [N, nz], sigma [N, nz], fill [N], background [N] for every index of ``ds``."""
    idx = list(range(len(ds)))
    a, b = ds.get_batch(idx)
    enc = [nets.E(b[i:i + BATCH]) for i in range(0, len(idx), BATCH)]
    mu = torch.cat([e[0] for e in enc])
    sigma = torch.cat([e[1] for e in enc]).mul(0.5).exp()
    params = [ds.params(i) for i in idx]
    return (a, mu, sigma, torch.tensor([p["fill"] for p in params]), torch.tensor([p["background"] for p in params]))


@torch.no_grad()
def probe(run: Path, n_train: int = 600, n_val: int = 300, seed: int = 0) -> dict:
    ckpt, nets, _ = load_model(run, "cpu")
    data = ckpt.config.data.data
    if data not in VARIANTS:
        raise SystemExit(f"{run}: trained on {data!r}; the probe needs a shapes variant ({', '.join(VARIANTS)})")
    size = ckpt.config.net.image_size
    train = ShapeVariantDataset(data, size, "train", ckpt.config.train.seed, length=n_train)
    val = ShapeVariantDataset(data, size, "val", ckpt.config.train.seed, length=n_val)
    g = torch.Generator().manual_seed(seed)
    _, tmu, tsig, tfill, tbg = _codes(nets, train)
    va, vmu, vsig, vfill, vbg = _codes(nets, val)
    tz = tmu + tsig * torch.randn(tmu.shape, generator=g)
    vz = vmu + vsig * torch.randn(vmu.shape, generator=g)
    out = torch.cat([nets.G(va[i:i + BATCH], vmu[i:i + BATCH]) for i in range(0, n_val, BATCH)])
    modes = val.mode_of(va, out)
    drawn = {"fill": modes // len(val.backgrounds), "background": modes % len(val.backgrounds)}
    result: dict = {"run": str(run), "data": data, "image_size": size, "step": ckpt.step,
                    "train_points": n_train, "val_points": n_val, "attributes": {}}
    for name, (tl, vl, values) in {"fill": (tfill, vfill, len(val.fills)),
                                   "background": (tbg, vbg, len(val.backgrounds))}.items():
        result["attributes"][name] = {
            "chance": 1 / values,
            "mean_knn": knn_accuracy(tmu, tl, vmu, vl),
            "sampled_knn": knn_accuracy(tz, tl, vz, vl),
            "decoded": float((drawn[name] == vl).float().mean()),
            "decoded_histogram": torch.bincount(drawn[name][modes >= 0], minlength=values).tolist(),
            "truth_histogram": torch.bincount(vl, minlength=values).tolist(),
        }
    fill_means = torch.stack([vmu[vfill == f].mean(0) for f in range(len(val.fills))])  # [F, nz]
    result["dimensions"] = {
        "sigma_median": vsig.median(0).values.tolist(),
        "mu_std": vmu.std(0).tolist(),
        "fill_share_of_mu_variance": (fill_means[vfill].var(0) / vmu.var(0)).tolist(),
    }
    result["fill_lines"] = fill_lines(nets.G, val, va, vmu, vfill, fill_means)
    return result


@torch.no_grad()
def fill_lines(G, val: ShapeVariantDataset, va: Tensor, vmu: Tensor, vfill: Tensor, fill_means: Tensor) -> dict:
    """va [V, Ca, S, S], vmu [V, nz], vfill [V], fill_means [F, nz] -> {"from": the commonest fill, "t": LINE_T,
    "drawn": {f: [histogram of the fills G drew, per t]}} (see the module docstring); a fill no val code has
    is left out."""
    n = min(LINE_INPUTS, len(vmu))
    common = int(torch.bincount(vfill, minlength=len(fill_means)).argmax())
    at_common = vmu[:n] - fill_means[vfill[:n]] + fill_means[common]
    drawn: dict[str, list[list[int]]] = {}
    for f in range(len(fill_means)):
        if torch.isnan(fill_means[f]).any():  # no val code has this fill
            continue
        row = []
        for t in LINE_T:
            modes = val.mode_of(va[:n], G(va[:n], at_common + t * (fill_means[f] - fill_means[common])))
            row.append(torch.bincount(modes[modes >= 0] // len(val.backgrounds), minlength=len(fill_means)).tolist())
        drawn[str(f)] = row
    return {"from": common, "t": list(LINE_T), "drawn": drawn}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, nargs="+", help="run directories or checkpoints trained on a shapes variant")
    p.add_argument("--train", type=int, default=600, help="train images encoded as the probe's references")
    p.add_argument("--val", type=int, default=300, help="val images probed")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled codes' noise")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    results = []
    for run in args.run:
        r = probe(run, args.train, args.val, args.seed)
        results.append(r)
        for name, a in r["attributes"].items():
            print(f"step {r['step']:>7d}  {name:10s} chance {a['chance']:.2f}  E mean {a['mean_knn']:.3f}  "
                  f"sampled code {a['sampled_knn']:.3f}  G(A, mu) {a['decoded']:.3f}  drawn {a['decoded_histogram']} "
                  f"truth {a['truth_histogram']}")
        lines = r["fill_lines"]
        print(f"step {r['step']:>7d}  G draws fill f on the line from fill {lines['from']}'s mean to f's, t = "
              f"{lines['t']}: " + "; ".join(f"{f}: {[h[int(f)] for h in row]}" for f, row in lines["drawn"].items()))
    if args.json:
        args.json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
