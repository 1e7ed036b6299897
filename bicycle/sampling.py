"""``bicycle sample``: load a checkpoint (the config travels with it) and translate inputs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bicycle.build import build_eval_dataset, check_channels
from bicycle.data.base import oracle_of
from bicycle.loading import load_model
from bicycle.plugins import get_plugins
from bicycle.sample import distinct_valid_modes, sample_grid, save_image


def run_sample(checkpoint: str, input_path: Path | None, data: str | None, samples: int, n_inputs: int,
               out: Path, seed: int, device: str, echo: Callable[[str], None] = print) -> dict:
    ckpt, nets, dev = load_model(checkpoint, device)
    cfg = ckpt.config
    echo(f"checkpoint {ckpt.path} (step {ckpt.step}, model {cfg.train.model}, {cfg.net.image_size} px)")
    names: list[str]
    b = None
    oracle = None
    if input_path is not None:
        from bicycle.data.images import input_paths, load_input_images
        paths = input_paths(input_path)
        a = load_input_images(input_path, cfg.net.image_size, cfg.net.in_channels)
        names = [p.stem for p in paths]
    else:
        import dataclasses
        dcfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data=data))
        registry = get_plugins().registry
        ds = build_eval_dataset(dcfg, registry, "the inputs", echo=echo)
        check_channels(ds, dcfg)
        n = min(n_inputs, len(ds))
        a, b = ds.get_batch(list(range(n)))
        names = [f"input_{i:03d}" for i in range(n)]
        oracle = oracle_of(ds)
    z = torch.randn(a.shape[0], samples, cfg.net.nz, generator=torch.Generator().manual_seed(seed))
    image, outs = sample_grid(nets, a.to(dev), None if b is None else b.to(dev), z.to(dev))
    out.mkdir(parents=True, exist_ok=True)
    image.save(out / "grid.png")
    for i, name in enumerate(names):
        for k in range(samples):
            save_image(outs[i, k], out / name / f"sample_{k:02d}.png")
    echo(f"wrote {out / 'grid.png'} and {len(names) * samples} outputs under {out}/")
    result: dict = {"grid": str(out / "grid.png"), "inputs": len(names), "samples": samples}
    if oracle is not None:
        distinct, valid = distinct_valid_modes(oracle, a, outs.cpu())
        echo(f"oracle: valid rate {valid.float().mean():.2f}; distinct valid modes per input {distinct.tolist()}")
        result.update(valid_rate=float(valid.float().mean()), modes_per_input=distinct.tolist())
    return result
