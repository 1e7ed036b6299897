#!/usr/bin/env python3
"""Signals for a run on a folder of real photographs, which has no oracle.

    python experiments/quality/photodiv.py RUN [--inputs 50] [--samples 8] [--weights auto|raw]

On the run's validation inputs, for the default sampler (``auto``) and the prior:
- ``diversity``: mean |difference| between consecutive outputs of one input (as ``bicycle eval``'s
  ``diversity_pixel_l1``, in [-1, 1] units), beside ``between_photos``, the same between consecutive ground truths;
- ``texture``: the outputs' mean |3x3 Laplacian| minus the ground truths', in levels of 255 (stripes, dot grids);
- ``encoded_l1``: mean |G(A, mu(E(B))) - B|, how well the encoded output keeps the photo;
- ``foreground_iou``: for sets shot on a white background (shoes, handbags), the IoU of each output's object mask
  (pixels more than 25 levels from white in some channel) with its ground truth's: whether the outputs fill the
  input's outline rather than a blob of their own;
- ``collapse_warnings``: how many times the run's monitor warned of posterior collapse (train.log).
One JSON line on stdout. Calibration only: never a result (see README.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diagnose import laplacian_level


def object_mask(x):
    """[..., 3, H, W] in [-1, 1] -> bool [..., H, W]: pixels more than 25 levels from white in some channel."""
    return (x < 1 - 2 * 25 / 255).any(-3)


def foreground_iou(outs, truth):
    """outs [N, K, 3, H, W], truth [N, 3, H, W] -> mean IoU of the outputs' object masks with the truth's."""
    m, t = object_mask(outs), object_mask(truth)[:, None]
    inter, union = (m & t).flatten(2).sum(-1), (m | t).flatten(2).sum(-1)
    return float((inter / union.clamp_min(1)).mean())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--inputs", type=int, default=50)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--weights", default="auto")
    a = p.parse_args(argv)

    import bicycle
    from bicycle.build import build_eval_dataset
    from bicycle.inference.metrics import consecutive_pair_l1
    from bicycle.plugins import get_plugins

    model = bicycle.load(a.run, device="cpu", weights=a.weights)
    ds = build_eval_dataset(model.config, get_plugins().registry, model_channels=True)
    A, B = ds.get_batch(list(range(min(a.inputs, len(ds)))))
    enc = model.generate(A, model.encode(B)[:, None])[:, 0]
    log = Path(a.run, "train.log")
    row: dict = {"run": a.run, "weights": model.weights, "inputs": len(A), "samples": a.samples,
                 "between_photos": float((B[1:] - B[:-1]).abs().mean()),
                 "encoded_l1": float((enc - B).abs().mean()),
                 "encoded_iou": foreground_iou(enc[:, None], B),
                 "encoded_texture": float(laplacian_level(enc).mean() - laplacian_level(B).mean()),
                 "collapse_warnings": log.read_text().count("posterior collapse") if log.exists() else None}
    for source in ("auto", "prior"):
        outs = model.generate(A, model.random_z(len(A), a.samples, seed=0, z_source=source))
        row[source] = {"diversity": float(consecutive_pair_l1(outs).mean()),
                       "texture": float(laplacian_level(outs.flatten(0, 1)).mean() - laplacian_level(B).mean()),
                       "foreground_iou": foreground_iou(outs, B)}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
