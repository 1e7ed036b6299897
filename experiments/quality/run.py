#!/usr/bin/env python3
"""Quality on tasks nobody tuned for: train and evaluate on ``procedural:N`` tasks exactly as a user would.

    python experiments/quality/run.py --tasks 10000 10001 ... [--image-size 128] [--label NAME] [--again]
        [-- extra bicycle train flags]

Per task, as subprocesses (``--jobs`` tasks at a time, default one): ``bicycle train --data procedural:N
--image-size S [--backbone unetS] --run-dir RUNS/<label>/task_N [FLAGS]``, then ``bicycle eval --inputs 100 --samples 20`` with each z
source. The task's row (its description, the train wall time from the run's own summary.json, both sources'
measures, the encoded-output rate) goes to ``results/<label>/task_N.json`` as soon as it ends; a task whose
row exists is reused, a run dir without a summary is resumed with ``bicycle train --resume``.

The protocol that cannot overfit: task seeds below ``CHECK_FROM`` (10,000) are for calibration, looked at
as often as one likes; seeds from 10,000 up are check tasks, each looked at once. ``ledger.json`` (beside
this file; commit it) records every check task run: seed, label, commit, date, config hash. A check seed
already in the ledger is refused unless ``--again`` (then the new row says so). The report, median over the
tasks with every task's row, is a result only with at least 6 check tasks.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bicycle.bench.common import run_bicycle

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHECK_FROM = 10_000
MIN_CHECK_TASKS = 6
SOURCES = ("prior", "posterior")
MEASURES = ("valid_rate", "modes_per_input", "ideal_modes_per_input", "modes_fraction_of_ideal", "mode_jsd",
            "encoded_mode_rate", "diversity_pixel_l1")
# (name, source, measure, threshold): the targets, medians over >= 6 fresh check tasks at 128 px
TARGETS = [("default sampler valid", "posterior", "valid_rate", 0.80),
           ("default sampler modes of ideal", "posterior", "modes_fraction_of_ideal", 0.60),
           ("prior valid", "prior", "valid_rate", 0.50),
           ("prior modes of ideal", "prior", "modes_fraction_of_ideal", 0.50),
           ("encoded output keeps the mode", "prior", "encoded_mode_rate", 0.90)]


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def config_hash(run: Path) -> str:
    """sha256 (12 hex) of the run's resolved config without what differs per task (the data and the run dir)."""
    cfg = json.loads((run / "config.json").read_text())
    cfg.get("data", {}).pop("data", None)
    cfg.get("train", {}).pop("run_dir", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def read_ledger(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


_LEDGER_LOCK = threading.Lock()


def record(path: Path, entry: dict) -> None:
    """Append one check task to the ledger as it is on disk now (another job may have added its own)."""
    with _LEDGER_LOCK:
        ledger = read_ledger(path) + [entry]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger, indent=1) + "\n")
        os.replace(tmp, path)


def run_task(task: int, a: argparse.Namespace, runs: Path) -> dict:
    run = runs / f"task_{task}"
    log = runs / f"task_{task}.log"
    runs.mkdir(parents=True, exist_ok=True)
    if not (run / "summary.json").exists():
        if (run / "checkpoints" / "latest").exists():
            run_bicycle(["train", "--resume", str(run)], log, a.threads)
        else:
            backbone = ["--backbone", f"unet{a.image_size}"] if a.image_size in (128, 256) else []
            run_bicycle(["train", "--data", f"procedural:{task}", "--image-size", str(a.image_size), *backbone,
                         "--run-dir", str(run), *a.flags], log, a.threads)
    summary = json.loads((run / "summary.json").read_text())
    from bicycle.data.procedural import draw_task

    row: dict = {"task": task, "description": draw_task(task).describe(), "steps": summary["step"],
                 "train_seconds": summary["seconds"], "flags": a.flags, "config_hash": config_hash(run),
                 "commit": commit(), "date": datetime.date.today().isoformat(), "threads": a.threads}
    averaged = json.loads((run / "config.json").read_text())["train"].get("ema", 0) > 0
    for source in SOURCES:  # a run that keeps a moving average is measured with both its weights
        for weights in ("auto", "raw") if averaged else ("auto",):
            key = source if weights == "auto" else f"{source}_raw"
            out = run / f"eval_{key}.json"
            if not out.exists():
                run_bicycle(["eval", "--checkpoint", str(run), "--inputs", str(a.inputs), "--samples", str(a.samples),
                             "--z-source", source, "--weights", weights, "--json", str(out)], log, a.threads)
            res = json.loads(out.read_text())
            row[key] = {k: res.get(k) for k in MEASURES}
    return row


def report(rows: list[dict]) -> dict:
    check = [r for r in rows if r["task"] >= CHECK_FROM]
    med: dict = {"train_seconds": statistics.median(r["train_seconds"] for r in rows)}
    for source in SOURCES:
        med[source] = {k: statistics.median(r[source][k] for r in rows) for k in MEASURES
                       if all(r[source].get(k) is not None for r in rows)}
    targets = [{"target": name, "threshold": t, "median": med[s].get(m),
                "met": None if med[s].get(m) is None else med[s][m] >= t} for name, s, m, t in TARGETS]
    return {"median": med, "targets": targets, "check_tasks": len(check),
            "is_a_result": len(check) >= MIN_CHECK_TASKS and len(check) == len(rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, nargs="+", required=True, help="task seeds (>= 10000: check tasks, once each)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--label", default="defaults")
    p.add_argument("--again", action="store_true", help="run check tasks already in the ledger (said in their rows)")
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch threads per subprocess")
    p.add_argument("--jobs", type=int, default=1,
                   help="tasks at a time (train times are then not one-run-at-a-time budget measures)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--runs", type=Path, default=HERE / "runs", help="run dirs (not committed)")
    p.add_argument("--ledger", type=Path, default=HERE / "ledger.json")
    p.add_argument("flags", nargs="*", help="extra `bicycle train` flags, after --")
    a = p.parse_args(argv)
    ledger = read_ledger(a.ledger)
    used = sorted({e["seed"] for e in ledger} & {t for t in a.tasks if t >= CHECK_FROM})
    if used and not a.again:
        print(f"run.py: check task(s) {', '.join(map(str, used))} were looked at already ({a.ledger.name}); "
              f"take fresh seeds >= {CHECK_FROM}, or pass --again", file=sys.stderr)
        return 2
    out = a.out / a.label
    out.mkdir(parents=True, exist_ok=True)

    def one(task: int) -> dict:
        path = out / f"task_{task}.json"
        if path.exists() and task < CHECK_FROM:
            return json.loads(path.read_text())
        row = run_task(task, a, a.runs / a.label)
        if task >= CHECK_FROM:
            row["again"] = task in used
            record(a.ledger, {"seed": task, "label": a.label, "commit": row["commit"], "date": row["date"],
                              "config_hash": row["config_hash"]})
        path.write_text(json.dumps(row, indent=1) + "\n")
        print(f"task {task}: {row['description']}; {row['train_seconds']:.0f} s; " + "; ".join(
            f"{s}: valid {row[s]['valid_rate']:.2f}, modes {row[s]['modes_fraction_of_ideal']:.0%} of ideal"
            for s in SOURCES) + f"; encoded {row['prior']['encoded_mode_rate']:.2f}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        rows = list(pool.map(one, a.tasks))
    summary = {"label": a.label, "image_size": a.image_size, "flags": a.flags, "tasks": a.tasks,
               "protocol": {"inputs": a.inputs, "samples": a.samples, "threads": a.threads, "jobs": a.jobs}, "rows": rows,
               **report(rows)}
    (out / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    for t in summary["targets"]:
        print(f"{t['target']}: median {t['median']} (target >= {t['threshold']}): "
              f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[t['met']]}")
    if not summary["is_a_result"]:
        print(f"note: {summary['check_tasks']} check task(s) of {len(rows)}: a result needs >= {MIN_CHECK_TASKS} "
              f"check tasks (seeds >= {CHECK_FROM}) and no calibration tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
