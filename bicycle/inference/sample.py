"""Sampling: outputs for random z, encoded outputs, picture grids and the oracle's mode count; ``bicycle sample``
(:func:`run_sample`): load a checkpoint (the config travels with it) and translate inputs."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bicycle.build import build_eval_dataset, check_channels
from bicycle.data.base import Oracle, oracle_of
from bicycle.inference.model import Model, load, to_pil
from bicycle.nets import Nets
from bicycle.outputs import check_room, staged_folder
from bicycle.plugins import get_plugins


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


GIF_FRAME_MS = 120


def _inputs(model: Model, input_path: Path | None, data: str | None, n_inputs: int, echo: Callable[[str], None]):
    """(A [N, C, S, S], B or None, names, oracle or None): the files of ``input_path``, or the val split of
    ``data`` (default: the dataset the checkpoint was trained on)."""
    cfg = model.config
    if input_path is not None:
        from bicycle.data.images import input_paths, load_input_images
        paths = input_paths(input_path)
        return load_input_images(input_path, cfg.net.image_size, cfg.net.in_channels), None, [p.stem for p in paths], None
    if data is None:
        echo(f"inputs: the checkpoint's own dataset {cfg.data.data!r} (val split)")
    dcfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data=data or cfg.data.data))
    ds = build_eval_dataset(dcfg, get_plugins().registry, "the inputs", echo=echo, model_channels=True)
    check_channels(ds, dcfg)
    n = min(n_inputs, len(ds))
    a, b = ds.get_batch(list(range(n)))
    return a, b, [f"input_{i:03d}" for i in range(n)], oracle_of(ds)


def write_animation(frames: torch.Tensor, stem: Path) -> None:
    """frames [F, C, S, S] in [-1, 1] -> ``stem``.gif (looping, GIF_FRAME_MS per frame) and ``stem``.png
    (the frames in a row)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    rgb = [to_pil(f).convert("RGB") for f in frames]
    rgb[0].save(stem.with_suffix(".gif"), save_all=True, append_images=rgb[1:], duration=GIF_FRAME_MS, loop=0)
    grid_image([list(frames)]).save(stem.with_suffix(".png"))


def output_bytes(n_inputs: int, samples: int, size: int, interpolate: int = 0) -> int:
    """An upper bound on what ``bicycle sample`` writes (PNG and GIF of RGB pixels, uncompressed, with slack):
    the grid, every output and the interpolations."""
    pixels = n_inputs * (samples + 3) * (size + 2) ** 2 + n_inputs * samples * size**2 + 2 * n_inputs * interpolate * size**2
    return int(3 * pixels * 1.1) + (1 << 20)


def run_sample(checkpoint: str, input_path: Path | None, data: str | None, samples: int, n_inputs: int,
               out: Path, seed: int, device: str, echo: Callable[[str], None] = print,
               references: Sequence[Path] = (), interpolate: int = 0, z_source: str = "auto",
               temperature: float = 1.0, weights: str = "auto") -> dict:
    """``bicycle sample``: a grid and the outputs of ``samples`` random codes per input from ``z_source`` (see
    :meth:`Model.z_source`), or of the ``references``' codes; ``weights``: see :func:`~bicycle.inference.model.load`."""
    model = load(checkpoint, device, weights)
    cfg = model.config
    echo(f"checkpoint {model.path} (step {model.step}, model {cfg.train.model}, {cfg.net.image_size} px)")
    source = None if references else model.z_source(z_source, temperature)  # before any data is read
    echo(model.weights_note)
    a, b, names, oracle = _inputs(model, input_path, data, n_inputs, echo)
    if references:
        codes = model.encode(list(references))
        z = codes[None].expand(len(a), -1, -1)
        echo(f"codes: {len(references)} reference image(s) encoded (one output per reference)")
    else:
        z = model.random_z(len(a), samples, seed, z_source=source)
        echo(f"codes: {samples} random z per input from {source.describe()}, temperature {temperature:g}, seed {seed}")
    dev = model.device
    check_room(out, output_bytes(len(names), z.shape[1], cfg.net.image_size, interpolate), "--out")
    image, outs = sample_grid(model.nets, a.to(dev), None if b is None else b.to(dev), z.to(dev))
    kind = "reference" if references else "sample"
    result: dict = {"grid": str(out / "grid.png"), "inputs": len(names), "samples": int(outs.shape[1]),
                    "z_source": source.name if source else "reference", "temperature": temperature,
                    "weights": model.weights}
    with staged_folder(out) as stage:  # every output, or none (disk full, Ctrl-C)
        image.save(stage / "grid.png")
        for i, name in enumerate(names):
            for k in range(outs.shape[1]):
                save_image(outs[i, k], stage / name / f"{kind}_{k:02d}.png")
        for i, name in enumerate(names if interpolate else []):
            frames = model.interpolate(a[i], z[i, 0], z[i, 1], interpolate, tensors=True)
            write_animation(frames, stage / name / "interpolation")
    echo(f"wrote {out / 'grid.png'} and {len(names) * outs.shape[1]} outputs under {out}/")
    if interpolate:
        ends = "the two reference codes" if references else "sample_00's and sample_01's codes"
        echo(f"wrote {len(names)} interpolations ({interpolate} frames between {ends}): <input>/interpolation.gif and .png")
        result["interpolation_frames"] = interpolate
    if oracle is not None and not references:
        distinct, valid = distinct_valid_modes(oracle, a, outs.cpu())
        echo(f"oracle: valid rate {valid.float().mean():.2f}; distinct valid modes per input {distinct.tolist()}")
        result.update(valid_rate=float(valid.float().mean()), modes_per_input=distinct.tolist())
    return result
