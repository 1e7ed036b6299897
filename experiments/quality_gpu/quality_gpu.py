"""Issue 5's GPU quality target: a 128-px BicycleGAN on the built-in dataset (unet128, z at all layers,
batch 8, the paper's widths 64, otherwise the demo preset), trained for at most 5,000 iterations, then
`bicycle eval` (M = 100, N = 20). Target: valid_rate >= 0.9 and >= 75% of the ideal modes per input.
Wall time of the training is recorded; the JSON names the device, the commit and the budget.

    python experiments/quality_gpu/quality_gpu.py --device cuda --out $OUT/quality_128.json [--steps 5000] [--time-limit 420]

``--time-limit`` stops training between steps (with a checkpoint) when the device budget runs out; the
JSON then says how many steps were reached, and the target counts as unmet.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import threading
import time
from pathlib import Path

import torch

from bicycle.bench.common import git_commit
from bicycle.config import PRESETS, replace, validate
from bicycle.inference.evaluate import evaluate
from bicycle.plugins import get_plugins
from bicycle.build import build_eval_dataset
from bicycle.inference.loading import load_model
from bicycle.train.loop import train

VALID_TARGET, MODES_TARGET = 0.9, 0.75


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--width", type=int, default=64, help="ngf = nef = ndf")
    p.add_argument("--time-limit", type=float, default=None, help="seconds of training at most")
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--run-dir", type=Path, default=Path("runs/quality_128"))
    p.add_argument("--out", type=Path, default=Path("quality_128.json"))
    args = p.parse_args()
    w = args.width
    cfg = validate(replace(PRESETS["demo"], {
        "net.backbone": "unet128", "net.image_size": 128, "net.inject": "all", "net.ngf": w, "net.nef": w,
        "net.ndf": w, "train.batch_size": 8, "train.steps": args.steps, "train.device": args.device,
        "train.sample_every": max(1, args.steps // 5), "train.checkpoint_every": max(1, args.steps // 5)}))
    # The time limit is a Ctrl-C to ourselves: the loop stops between steps and writes a checkpoint.
    timer = threading.Timer(args.time_limit, os.kill, (os.getpid(), signal.SIGINT)) if args.time_limit else None
    if timer is not None:
        timer.start()
    t0 = time.perf_counter()
    result = train(cfg, args.run_dir)
    seconds = time.perf_counter() - t0
    if timer is not None:
        timer.cancel()
    ckpt, nets, dev = load_model(args.run_dir, args.device)
    ds = build_eval_dataset(ckpt.config, get_plugins().registry)
    measures = evaluate(nets, ds, ckpt.config.net.nz, args.inputs, args.samples, 0, dev)
    reached = result.step >= args.steps
    record = {
        "device": torch.cuda.get_device_name() if str(dev).startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
        "config": ckpt.config.flat(), "steps_reached": result.step, "train_wall_seconds": round(seconds, 1),
        "measures": {k: v for k, v in measures.items() if k != "notes"},
        "targets": {"valid_rate": {"target": f">= {VALID_TARGET}", "met": reached and measures["valid_rate"] >= VALID_TARGET},
                    "modes_fraction_of_ideal": {"target": f">= {MODES_TARGET}",
                                                "met": reached and measures["modes_fraction_of_ideal"] >= MODES_TARGET},
                    "within_steps": args.steps, "steps_reached_all": reached},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("device", "steps_reached", "train_wall_seconds", "targets")}, indent=2))
    print({k: measures[k] for k in ("valid_rate", "modes_per_input", "modes_fraction_of_ideal", "mode_jsd")})


if __name__ == "__main__":
    main()
