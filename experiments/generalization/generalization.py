"""Train and evaluate on a ``shapes`` variant exactly as a user would: ``bicycle train --data NAME --image-size S
--backbone unetS [FLAGS]`` (at 32 px plain ``bicycle train --data NAME``, the demo) and ``bicycle eval --inputs 100 --samples 20`` with both z sources, one run at a
time, as subprocesses. Used for the calibration of the defaults on the variant family and, once, for the
held-out ``shapes-outline`` report.

    python experiments/generalization/generalization.py --data shapes-unequal --seeds 0 --out experiments/generalization/results \\
        [--label NAME] [--threads 2] [-- extra train flags]

Each run leaves ``OUT/runs/<label>-<data>-s<seed>/`` and its ``record.json`` (reused unless ``--fresh``); the
records of the runs asked for go to ``OUT/<label>-<data>.json`` with the medians. Training time is the run's
own ``summary.json`` ``seconds`` (the final report and the posterior fit included).
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

from bicycle.bench.common import git_commit, run_bicycle

MEASURES = ["valid_rate", "modes_per_input", "ideal_modes_per_input", "modes_fraction_of_ideal", "mode_jsd",
            "encoded_mode_rate", "prior_coverage", "valid_rate_covered", "valid_rate_uncovered", "z_sensitivity"]


def run_one(run: Path, data: str, size: int, seed: int, flags: list[str], threads: int, inputs: int,
            samples: int) -> dict:
    log = run.parent / f"{run.name}.log"
    run.parent.mkdir(parents=True, exist_ok=True)
    if not (run / "summary.json").exists():
        if run.exists():
            import shutil
            shutil.rmtree(run)
        backbone = f"unet{size}" if size in (128, 256) else "unet"  # the paper's named U-Nets where they exist
        shape = [] if size == 32 else ["--image-size", str(size), "--backbone", backbone]  # 32: the demo
        run_bicycle(["train", "--data", data, *shape, "--seed", str(seed), "--run-dir", str(run), *flags], log, threads)
    summary = json.loads((run / "summary.json").read_text())
    rec: dict = {"data": data, "seed": seed, "flags": flags, "steps": summary["step"],
                 "train_seconds": summary["seconds"], "threads": threads, "commit": git_commit()}
    if (run / "record.json").exists():  # a reused run keeps how and where it was trained
        old = json.loads((run / "record.json").read_text())
        if old.get("flags", flags) != flags:
            raise SystemExit(f"{run} was trained with flags {old['flags']}, not {flags}: pass the same flags, "
                             "or --fresh to retrain")
        rec.update({k: old[k] for k in ("threads", "commit") if k in old})
    for source in ("prior", "posterior"):
        out = run / f"eval_{source}.json"
        if not out.exists():
            run_bicycle(["eval", "--checkpoint", str(run), "--inputs", str(inputs), "--samples", str(samples),
                         "--z-source", source, "--json", str(out)], log, threads)
        res = json.loads(out.read_text())
        rec[source] = {k: res.get(k) for k in MEASURES}
    (run / "record.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def medians(records: list[dict]) -> dict:
    out: dict = {"train_seconds": statistics.median(r["train_seconds"] for r in records)}
    for source in ("prior", "posterior"):
        out[source] = {k: statistics.median(r[source][k] for r in records) for k in MEASURES
                       if all(r[source].get(k) is not None for r in records)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--label", default="defaults")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("flags", nargs="*", help="extra `bicycle train` flags, after --")
    a = p.parse_args()
    records = []
    for seed in a.seeds:
        run = a.out / "runs" / f"{a.label}-{a.data}-s{seed}"
        if a.fresh and (run / "record.json").exists():
            (run / "summary.json").unlink(missing_ok=True)
        t0 = time.time()
        rec = run_one(run, a.data, a.image_size, seed, a.flags, a.threads, a.inputs, a.samples)
        print(f"{run.name}: {rec['train_seconds']:.0f} s training, {rec['steps']} steps; "
              + "; ".join(f"{s}: valid {rec[s]['valid_rate']:.3f}, modes {rec[s]['modes_per_input']:.2f}/"
                          f"{rec[s]['ideal_modes_per_input']:.2f}, jsd {rec[s]['mode_jsd']:.3f}"
                          for s in ("prior", "posterior"))
              + f"; encoded {rec['prior']['encoded_mode_rate']:.2f} ({time.time() - t0:.0f} s wall)", flush=True)
        records.append(rec)
    result = {"label": a.label, "data": a.data, "image_size": a.image_size, "flags": a.flags, "seeds": a.seeds,
              "protocol": {"inputs": a.inputs, "samples": a.samples, "threads": a.threads, "runs_at_a_time": 1},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "records": records, "median": medians(records)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.label}-{a.data}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
