"""The paper's ablation on the built-in dataset: pix2pix+noise, cAE-GAN, cVAE-GAN, cLR-GAN and
BicycleGAN trained with the demo preset and the same budget, several seeds, evaluated with
`bicycle eval`'s measures. Writes JSON, a Markdown table and a picture.

    python benchmarks/ablation.py --out benchmarks/results/ablation [--seeds 0 1] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bicycle.config import PRESETS, replace
from bicycle.evaluate import evaluate
from bicycle.plugins import get_plugins
from bicycle.sample import grid_image, random_outputs
from bicycle.sampling import load_model
from bicycle.train.build import build_dataset
from bicycle.train.loop import train

MODELS = ["pix2pix", "cae-gan", "cvae-gan", "clr-gan", "bicycle"]
MEASURES = ["valid_rate", "modes_per_input", "modes_fraction_of_ideal", "mode_jsd", "encoded_mode_rate",
            "diversity_pixel_l1", "encoded_recon_l1", "z_sensitivity"]


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(out: Path, seeds: list[int], steps: int | None, inputs: int, samples: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    records = []
    pictures = []
    for model in MODELS:
        for seed in seeds:
            over = {"train.model": model, "train.seed": seed}
            if steps:
                over["train.steps"] = steps
            cfg = replace(PRESETS["demo"], over)
            run_dir = out / "runs" / f"{model}-s{seed}"
            t0 = time.perf_counter()
            result = train(cfg, run_dir, echo=lambda m: None)
            seconds = time.perf_counter() - t0
            ckpt, nets, dev = load_model(run_dir, "cpu")
            val = build_dataset(ckpt.config, get_plugins().registry, "val")
            measures = evaluate(nets, val, ckpt.config.net.nz, inputs, samples, 0, dev)
            rec = {"model": model, "seed": seed, "steps": result.step, "train_seconds": round(seconds, 1),
                   "ignoring_z_warning": result.summary.get("ignoring_z_warning"), **{k: measures.get(k) for k in MEASURES}}
            records.append(rec)
            print(json.dumps(rec), flush=True)
            if seed == seeds[0]:
                a, _ = val.get_batch(list(range(4)))
                z = torch.randn(4, 8, ckpt.config.net.nz, generator=torch.Generator().manual_seed(1))
                outs = random_outputs(nets.G, a, z)
                pictures.append((model, grid_image([[a[i], *outs[i]] for i in range(4)])))
    table = summarise(records)
    meta = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
            "torch": torch.__version__, "commit": _commit(), "date": time.strftime("%Y-%m-%d"),
            "budget": f"demo preset, {records[0]['steps']} steps each", "eval": {"inputs": inputs, "samples": samples}}
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "runs": records, "summary": table}, indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(table, meta))
    picture(pictures).save(out / "ablation.png")
    return table


def summarise(records: list[dict]) -> dict:
    table = {}
    for model in MODELS:
        rows = [r for r in records if r["model"] == model]
        table[model] = {}
        for m in MEASURES + ["train_seconds"]:
            vals = [r[m] for r in rows if r[m] is not None]
            if vals:
                table[model][m] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
        table[model]["warning_fired"] = [r["ignoring_z_warning"] for r in rows]
    return table


def markdown(table: dict, meta: dict) -> str:
    cols = ["valid_rate", "modes_per_input", "mode_jsd", "encoded_mode_rate", "diversity_pixel_l1", "z_sensitivity"]
    lines = [f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, commit {meta['commit']}; "
             f"{meta['budget']}; eval M={meta['eval']['inputs']}, N={meta['eval']['samples']}. mean [min, max] over seeds.",
             "", "| model | " + " | ".join(cols) + " | 'ignoring z' warning |", "|---" * (len(cols) + 2) + "|"]
    for model, row in table.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("n/a" if v is None else f"{v['mean']:.3f} [{v['min']:.3f}, {v['max']:.3f}]")
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {row['warning_fired']} |")
    return "\n".join(lines) + "\n"


def picture(blocks: list[tuple[str, Image.Image]]) -> Image.Image:
    label_h = 14
    width = max(img.width for _, img in blocks)
    height = sum(img.height + label_h for _, img in blocks)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for name, img in blocks:
        draw.text((2, y + 1), name, fill="black")
        canvas.paste(img, (0, y + label_h))
        y += img.height + label_h
    return canvas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ablation"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=None, help="default: the demo preset's")
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(2)
    run(args.out, args.seeds, args.steps, args.inputs, args.samples)


if __name__ == "__main__":
    main()
