"""``bicycle sample``: load a checkpoint (the config travels with it) and translate inputs."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from bicycle.api import Model, load, to_pil
from bicycle.build import build_eval_dataset, check_channels
from bicycle.data.base import oracle_of
from bicycle.outputs import check_room, staged_folder
from bicycle.plugins import get_plugins
from bicycle.sample import distinct_valid_modes, grid_image, sample_grid, save_image

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


def _source_words(model: Model, z_source: str) -> str:
    if z_source == "prior":
        return "the prior N(0, I) (z-source prior)"
    from bicycle.posterior import posterior_path, run_dir_of
    return (f"the aggregate posterior, {model.posterior().k} components, {posterior_path(run_dir_of(model.path))} "
            f"(z-source posterior)")


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
               references: Sequence[Path] = (), interpolate: int = 0, z_source: str = "prior",
               temperature: float = 1.0) -> dict:
    model = load(checkpoint, device)
    cfg = model.config
    echo(f"checkpoint {model.path} (step {model.step}, model {cfg.train.model}, {cfg.net.image_size} px)")
    if not references and z_source == "posterior":
        model.posterior()  # a missing or stale posterior fails before any data is read
    a, b, names, oracle = _inputs(model, input_path, data, n_inputs, echo)
    if references:
        codes = model.encode(list(references))
        z = codes[None].expand(len(a), -1, -1)
        echo(f"codes: {len(references)} reference image(s) encoded (one output per reference)")
    else:
        z = model.random_z(len(a), samples, seed, z_source=z_source, temperature=temperature)
        echo(f"codes: {samples} random z per input from {_source_words(model, z_source)}, temperature {temperature:g}, "
             f"seed {seed}")
    dev = model.device
    check_room(out, output_bytes(len(names), z.shape[1], cfg.net.image_size, interpolate), "--out")
    image, outs = sample_grid(model.nets, a.to(dev), None if b is None else b.to(dev), z.to(dev))
    kind = "reference" if references else "sample"
    result: dict = {"grid": str(out / "grid.png"), "inputs": len(names), "samples": int(outs.shape[1]),
                    "z_source": "reference" if references else z_source, "temperature": temperature}
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
