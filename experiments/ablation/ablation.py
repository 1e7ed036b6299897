"""The paper's ablation on the built-in dataset: pix2pix+noise, cAE-GAN, cVAE-GAN, cLR-GAN and
BicycleGAN trained with the demo preset and the same budget, several seeds, evaluated with
`bicycle eval`'s measures; plus the demo's own target over its seeds (the demo preset *is* the
bicycle model). Writes JSON, a Markdown table and a picture.

    python experiments/ablation/ablation.py [--out experiments/ablation/results] [--seeds 0 1] [--demo-seeds 0 1 2] [--jobs 2]

Each (model, seed) run is its own process (``--jobs`` at a time, the machine's cores shared among
them) and leaves ``runs/<model>-s<seed>/record.json`` (and its output in ``train.log``); a record already there is reused unless
``--fresh``, so an interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bicycle.bench.common import git_commit
from bicycle.models import MODELS as SPECS

HERE = Path(__file__).resolve().parent

MODELS = ["pix2pix", "cae-gan", "cvae-gan", "clr-gan", "bicycle"]
MEASURES = ["valid_rate", "modes_per_input", "modes_fraction_of_ideal", "mode_jsd", "encoded_mode_rate",
            "prior_coverage", "valid_rate_covered", "valid_rate_uncovered", "diversity_pixel_l1", "encoded_recon_l1",
            "z_sensitivity"]
# Issue 5's targets on the built-in dataset (M = 100, N = 20).
DEMO_MODES_FRACTION, DEMO_VALID, PIX2PIX_MODES_FRACTION = 0.5, 0.7, 0.25
BUDGET_SECONDS = 8 * 60  # per run, on a 2-core CPU (training only; one run at a time uses both cores)


def run_dir_of(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / f"{model}-s{seed}"


def run_one(run_dir: Path, model: str, seed: int, steps: int | None, inputs: int, samples: int) -> dict:
    """Train one model with the demo preset, evaluate it, write record.json and picture.png in run_dir."""
    from bicycle.config import PRESETS, replace
    from bicycle.inference.evaluate import evaluate
    from bicycle.plugins import get_plugins
    from bicycle.inference.sample import grid_image, random_outputs
    from bicycle.build import build_dataset
    from bicycle.inference.loading import load_model
    from bicycle.train.loop import train

    over: dict = {"train.model": model, "train.seed": seed}
    if steps:
        over["train.steps"] = steps
    cfg = replace(PRESETS["demo"], over)
    t0 = time.perf_counter()
    result = train(cfg, run_dir, echo=lambda m: None)
    seconds = time.perf_counter() - t0
    ckpt, nets, dev = load_model(run_dir, "cpu")
    val = build_dataset(ckpt.config, get_plugins().registry, "val")
    measures = evaluate(nets, val, ckpt.config.net.nz, inputs, samples, 0, dev, variational=SPECS[model].variational)
    rec = {"model": model, "seed": seed, "steps": result.step, "train_seconds": round(seconds, 1),
           "threads": torch.get_num_threads(), "commit": git_commit(),
           "ignoring_z_warning": result.summary.get("ignoring_z_warning"), **{k: measures.get(k) for k in MEASURES}}
    a, _ = val.get_batch(list(range(4)))
    z = torch.randn(4, 8, ckpt.config.net.nz, generator=torch.Generator().manual_seed(1))
    outs = random_outputs(nets.G, a, z)
    grid_image([[a[i], *outs[i]] for i in range(4)]).save(run_dir / "picture.png")
    (run_dir / "record.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def _schedule(out: Path, jobs: list[tuple[str, int]], args: argparse.Namespace) -> None:
    """Runs the missing (model, seed) jobs as subprocesses, ``args.jobs`` at a time."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    pending = [(m, s) for m, s in jobs if args.fresh or not (run_dir_of(out, m, s) / "record.json").exists()]
    running: list[tuple[subprocess.Popen, str]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            model, seed = pending.pop(0)
            cmd = [sys.executable, __file__, "--one", model, str(seed), "--out", str(out), "--threads", str(threads),
                   "--inputs", str(args.inputs), "--samples", str(args.samples)]
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            run_dir = run_dir_of(out, model, seed)
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"start {model} seed {seed} ({threads} thread(s)), log: {run_dir / 'train.log'}", flush=True)
            with open(run_dir / "train.log", "w") as log:  # the child keeps its own copy of the handle
                running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), f"{model} seed {seed}"))
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                if proc.returncode != 0:
                    for other, _ in running:
                        other.terminate()
                    raise SystemExit(f"ablation: {name} failed with exit code {proc.returncode}; "
                                     f"see its train.log under {out / 'runs'}")
                print(f"done  {name}", flush=True)


def run(out: Path, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for m in MODELS for s in args.seeds]
    jobs += [("bicycle", s) for s in args.demo_seeds if s not in args.seeds]
    _schedule(out, jobs, args)
    records = [json.loads((run_dir_of(out, m, s) / "record.json").read_text()) for m, s in jobs]
    ablation = [r for r in records if r["seed"] in args.seeds]
    table = summarise(ablation)
    targets = check_targets(records, args.demo_seeds, args.seeds)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
            "torch": torch.__version__, "commits": sorted({str(r.get("commit")) for r in records}),
            "date": time.strftime("%Y-%m-%d"), "jobs": args.jobs,
            "threads_per_run": sorted({r.get("threads") for r in records}),
            "budget": f"demo preset, {records[0]['steps']} steps each", "eval": {"inputs": args.inputs, "samples": args.samples}}
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "targets": targets, "runs": records, "summary": table},
                                                  indent=2) + "\n")
    (out / "ablation.md").write_text(markdown(table, meta, targets))
    blocks = [(m, Image.open(run_dir_of(out, m, args.seeds[0]) / "picture.png")) for m in MODELS]
    picture(blocks).save(out / "ablation.png")
    print(markdown(table, meta, targets))
    return table


def check_targets(records: list[dict], demo_seeds: list[int], seeds: list[int]) -> dict:
    demo = [r for r in records if r["model"] == "bicycle" and r["seed"] in demo_seeds]
    p2p = [r for r in records if r["model"] == "pix2pix" and r["seed"] in seeds]
    modes = statistics.median(r["modes_fraction_of_ideal"] for r in demo)
    valid = statistics.median(r["valid_rate"] for r in demo)
    p2p_worst = max(r["modes_fraction_of_ideal"] for r in p2p)
    slowest = max(r["train_seconds"] for r in records)
    return {"demo_seeds": demo_seeds,
            "demo_median_modes_fraction_of_ideal": {"value": modes, "target": f">= {DEMO_MODES_FRACTION}",
                                                     "met": modes >= DEMO_MODES_FRACTION},
            "demo_median_valid_rate": {"value": valid, "target": f">= {DEMO_VALID}", "met": valid >= DEMO_VALID},
            "pix2pix_max_modes_fraction_of_ideal": {"value": p2p_worst, "target": f"<= {PIX2PIX_MODES_FRACTION}",
                                                    "met": p2p_worst <= PIX2PIX_MODES_FRACTION},
            "max_train_seconds": {"value": slowest, "target": f"<= {BUDGET_SECONDS}", "met": slowest <= BUDGET_SECONDS}}


def summarise(records: list[dict]) -> dict:
    table = {}
    for model in MODELS:
        rows = [r for r in records if r["model"] == model]
        table[model] = {}
        for m in MEASURES + ["train_seconds"]:
            vals = [r[m] for r in rows if r.get(m) is not None]
            if vals:
                table[model][m] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
        table[model]["warning_fired"] = [r["ignoring_z_warning"] for r in rows]
    return table


def markdown(table: dict, meta: dict, targets: dict) -> str:
    cols = ["valid_rate", "modes_per_input", "mode_jsd", "encoded_mode_rate", "prior_coverage", "diversity_pixel_l1",
            "z_sensitivity"]
    lines = [f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}, commit(s) {', '.join(meta['commits'])}; "
             f"{meta['budget']}, {meta['jobs']} run(s) at a time, {meta['threads_per_run']} thread(s) each; "
             f"eval M={meta['eval']['inputs']}, N={meta['eval']['samples']}. mean [min, max] over seeds.",
             "", "| model | " + " | ".join(cols) + " | 'ignoring z' warning |", "|---" * (len(cols) + 2) + "|"]
    for model, row in table.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("n/a" if v is None else f"{v['mean']:.3f} [{v['min']:.3f}, {v['max']:.3f}]")
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {row['warning_fired']} |")
    lines += ["", f"Targets (demo = bicycle over seeds {targets['demo_seeds']}):", ""]
    for key, t in targets.items():
        if key != "demo_seeds":
            lines.append(f"- {key}: {t['value']:.3f} (target {t['target']}): {'met' if t['met'] else 'NOT met'}")
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "results",
                   help="default: results/ beside this script")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every model")
    p.add_argument("--demo-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the demo (bicycle) target")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time; the cores are shared among them")
    p.add_argument("--steps", type=int, default=None, help="default: the demo preset's")
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--fresh", action="store_true", help="rerun every run, even one with a record")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.one:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        model, seed = args.one[0], int(args.one[1])
        print(json.dumps(run_one(run_dir_of(args.out, model, seed), model, seed, args.steps, args.inputs,
                                 args.samples)), flush=True)
        return
    run(args.out, args)


if __name__ == "__main__":
    main()
