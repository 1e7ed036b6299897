"""Sampling: outputs for random z, encoded outputs, picture grids and the oracle's mode count."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bicycle.data.base import Oracle
from bicycle.nets import Nets


def to_image(t: Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] -> uint8 [H, W, 3] (1 channel is shown as grey)."""
    t = t.detach().float().cpu().clamp(-1, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return ((t[:3] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_image(t: Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_image(t)).save(path)


def grid_image(rows: list[list[Tensor | None]], pad: int = 2) -> Image.Image:
    """rows of [C, H, W] tensors (None leaves a blank cell) -> one picture, white gutters."""
    h, w = next(c for r in rows for c in r if c is not None).shape[-2:]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if cell is not None:
                y, x = pad + i * (h + pad), pad + j * (w + pad)
                canvas[y:y + h, x:x + w] = to_image(cell)
    return Image.fromarray(canvas)


@torch.no_grad()
def random_outputs(G: torch.nn.Module, a: Tensor, z: Tensor) -> Tensor:
    """a: [N, Ca, S, S], z: [N, K, nz] -> [N, K, Cb, S, S]: G(a_i, z_ik) for every input and code."""
    n, k, nz = z.shape
    a_rep = a.unsqueeze(1).expand(n, k, *a.shape[1:]).reshape(n * k, *a.shape[1:])
    out = G(a_rep, z.reshape(n * k, nz))
    return out.view(n, k, *out.shape[1:])


@torch.no_grad()
def encoded_outputs(nets: Nets, a: Tensor, b: Tensor) -> Tensor | None:
    """G(a, mu(E(b))): [N, Cb, S, S], or None for models without an encoder."""
    if nets.E is None:
        return None
    mu, _ = nets.E(b)
    return nets.G(a, mu)


def sample_grid(nets: Nets, a: Tensor, b: Tensor | None, z: Tensor) -> tuple[Image.Image, Tensor]:
    """Per input a row: A, ground truth B and encoded output (when B is known), then G(A, z_k).
    Returns the picture and the random outputs [N, K, Cb, S, S]."""
    outs = random_outputs(nets.G, a, z)
    enc = encoded_outputs(nets, a, b) if b is not None else None
    rows = []
    for i in range(a.shape[0]):
        head: list[Tensor | None] = [a[i]]
        if b is not None:
            head += [b[i], enc[i] if enc is not None else None]
        rows.append(head + list(outs[i]))
    return grid_image(rows), outs


def distinct_valid_modes(oracle: Oracle, a: Tensor, outs: Tensor) -> tuple[Tensor, Tensor]:
    """a: [N, Ca, S, S], outs: [N, K, Cb, S, S] -> (distinct valid modes per input [N], valid [N, K])."""
    n, k = outs.shape[:2]
    a_rep = a.unsqueeze(1).expand(n, k, *a.shape[1:]).reshape(n * k, *a.shape[1:])
    flat = outs.reshape(n * k, *outs.shape[2:])
    valid = oracle.is_valid(a_rep, flat).view(n, k)
    modes = oracle.mode_of(a_rep, flat).view(n, k)
    distinct = torch.tensor([len(set(modes[i][valid[i]].tolist())) for i in range(n)])
    return distinct, valid
