"""Data parallelism on this machine: the demo preset's step time in one process, under torchrun with one
rank, and with two gloo ranks (each rank the demo's batch of 8, so two ranks train a global batch of 16).

    python benchmarks/ddp_cpu.py --json benchmarks/results/ddp_cpu_<date>.json [--steps 300]

s/step is the training loop's own rate after its warm-up (the last progress line of RUN/train.log);
images/s = global batch / (s/step). Threads: torchrun gives each rank OMP_NUM_THREADS=1; the single
process runs at 1 thread too so the three rows differ only in the ranks. On a 2-core VM this is a
correctness rig, not a scaling result: two ranks share the two cores with nothing else.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bicycle.bench.common import machine_meta, revision, write_json

RATE = re.compile(r"(\d+)/(\d+) .* ([0-9.]+) s/step")


def run(kind: str, steps: int, folder: Path) -> dict:
    run_dir = folder / kind
    flags = ["--steps", str(steps), "--log-every", str(steps), "--sample-every", str(10 * steps),
             "--checkpoint-every", str(10 * steps), "--device", "cpu", "--run-dir", str(run_dir)]
    if kind == "single":
        cmd = [sys.executable, "-m", "bicycle", "train", *flags]
    else:
        n = {"torchrun-1": "1", "torchrun-2": "2"}[kind]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", n, "-m", "bicycle",
               "train", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        return {"kind": kind, "error": (r.stdout + r.stderr)[-2000:]}
    last = [m for m in RATE.finditer((run_dir / "train.log").read_text())][-1]
    ranks = 2 if kind == "torchrun-2" else 1
    sec = float(last.group(3))
    return {"kind": kind, "ranks": ranks, "global_batch": 8 * ranks, "sec_per_step": sec,
            "steps_per_s": round(1 / sec, 2), "images_per_s": round(8 * ranks / sec, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("single", "torchrun-1", "torchrun-2"):
            rows.append(run(kind, args.steps, Path(tmp)))
            print(rows[-1], flush=True)
    out = {"benchmark": "ddp_cpu", "steps": args.steps, "preset": "demo", "machine": machine_meta("cpu"),
           "revision": revision(), "rows": rows}
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
