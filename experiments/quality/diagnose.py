#!/usr/bin/env python3
"""Continuous signals for calibration runs, where the oracle's pass/fail says 0 for every variant.

    python experiments/quality/diagnose.py RUN [--inputs 32] [--samples 8] [--weights auto|raw] [--z-source auto]

For a run trained on ``--data procedural:N``, on its validation inputs:
- ``valid_rate``: the oracle's verdict on the random-z outputs (as ``bicycle eval``);
- ``encoded_same_mode``: the encoded output's (fill, background) equals the ground truth's, validity aside;
- ``texture``: the mean absolute 3x3 Laplacian of the outputs minus the ground truths', in levels of 255
  (0: as smooth as the data; stripes and dot grids raise it; the shapes' edges cancel out).
One JSON line on stdout. Calibration only: never a result (see README.md).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def laplacian_level(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N] mean |Laplacian| in levels of 255."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(x.shape[1], 1, 3, 3)
    out = torch.nn.functional.conv2d(x.float().cpu(), kernel, groups=x.shape[1])
    return out.abs().mean(dim=(1, 2, 3)) * 127.5


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--inputs", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--weights", default="auto")
    p.add_argument("--z-source", default="auto")
    a = p.parse_args(argv)

    import bicycle
    from bicycle.build import build_eval_dataset
    from bicycle.data.base import oracle_of
    from bicycle.plugins import get_plugins

    model = bicycle.load(a.run, device="cpu", weights=a.weights)
    ds = build_eval_dataset(model.config, get_plugins().registry, model_channels=True)
    oracle = oracle_of(ds)
    if oracle is None:
        raise SystemExit(f"{a.run}: its dataset has no oracle (train on --data procedural:N)")
    A, B = ds.get_batch(list(range(min(a.inputs, len(ds)))))
    z = model.random_z(len(A), a.samples, seed=0, z_source=a.z_source)
    enc = model.generate(A, model.encode(B)[:, None])[:, 0]  # [M, C, S, S]
    outs = model.generate(A, z)  # [M, N, C, S, S]
    flat_a = A.repeat_interleave(a.samples, 0)
    flat = outs.flatten(0, 1)
    row = {"run": a.run, "weights": model.weights, "z_source": a.z_source, "inputs": len(A), "samples": a.samples,
           "valid_rate": float(oracle.is_valid(flat_a, flat).float().mean()),
           "encoded_same_mode": float((oracle.mode_of(A, enc) == oracle.mode_of(A, B)).float().mean()),
           "texture": float(laplacian_level(flat).mean() - laplacian_level(B).mean()),
           "encoded_texture": float(laplacian_level(enc).mean() - laplacian_level(B).mean())}
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
