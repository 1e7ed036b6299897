"""Soak benchmark: "long runs stay flat". Trains the default demo (what `bicycle train` with no flags runs:
the demo preset, 5,000 steps) in this process through the library, with an observer plugin on the
``bicycle_train_step`` hook that records, every ``--every`` steps, the process's resident memory (VmRSS, and
its peak VmHWM, from /proc/self/status), the step time over the last ``--every`` steps, the open file
descriptors (/proc/self/fd) and the threads (``threading.active_count()`` and the kernel's count).

    python benchmarks/soak.py --json benchmarks/results/soak_cpu_<date>.json [--steps 5000] [--every 500]

Targets: RSS at the end within 5% of RSS at the first sample (step 500); no more open files and no more
threads at the end than at step 500. Not a CI test: ~8-10 minutes on the 2-core CPU machine. Step times
are informative only (the machine is shared; each window also holds the sample grid and checkpoint written
at the previous multiple of 500). ``--tracemalloc`` also traces Python allocations between the first and
the last sample (slower; to find Python-side growth when the RSS target is missed). Linux only (/proc).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

RSS_TOLERANCE = 0.05  # end RSS within 5% of the first sample's


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads from /proc/self/status."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def open_fds() -> list[str]:
    """Targets of this process's open file descriptors (the listing's own descriptor excluded)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor os.listdir itself held, closed by now
            continue
    return sorted(names)


def measure() -> dict:
    st = proc_status()
    fds = open_fds()
    return {"rss_mib": round(st["VmRSS"] / 1024, 2), "hwm_mib": round(st["VmHWM"] / 1024, 2),
            "open_fds": len(fds), "threads_python": threading.active_count(), "threads_os": st["Threads"],
            "loadavg_1m": round(os.getloadavg()[0], 2)}


class SoakObserver:
    """Observer plugin: one sample at every multiple of ``every`` and at the last step."""

    def __init__(self, every: int, total: int, trace: bool) -> None:
        self.every, self.total, self.trace = every, total, trace
        self.samples: list[dict] = []
        self.fds_first: list[str] | None = None
        self.fds_last: list[str] | None = None
        self.snap_first = self.snap_last = None
        self._t = self._step = None
        self.t_start = None

    def bicycle_train_start(self, start_step: int) -> None:
        self._t, self._step = time.perf_counter(), start_step
        self.t_start = self._t
        self.before = {"step": start_step, **measure()}  # before the first step: networks built, nothing run
        if self.trace:
            tracemalloc.start(10)

    def bicycle_train_step(self, step: int, metrics: dict[str, float]) -> None:
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        sample = {"step": step, "elapsed_s": round(now - self.t_start, 1),
                  "sec_per_step": round((now - self._t) / max(1, step - self._step), 4), **measure(),
                  "loop_sec_per_step": round(metrics.get("sec_per_step", float("nan")), 4)}
        self._t, self._step = now, step
        self.samples.append(sample)
        fds = open_fds()
        if self.fds_first is None:
            self.fds_first = fds
        self.fds_last = fds
        if self.trace:
            snap = tracemalloc.take_snapshot()
            if self.snap_first is None:
                self.snap_first = snap
            self.snap_last = snap
        print(row(sample), flush=True)


HEADER = f"{'step':>6} {'RSS MiB':>8} {'HWM MiB':>8} {'s/step':>7} {'fds':>4} {'thr py':>6} {'thr os':>6} {'load':>5}"


def row(s: dict) -> str:
    return (f"{s['step']:>6} {s['rss_mib']:>8.1f} {s['hwm_mib']:>8.1f} {s.get('sec_per_step', float('nan')):>7.3f} "
            f"{s['open_fds']:>4} {s['threads_python']:>6} {s['threads_os']:>6} {s['loadavg_1m']:>5.2f}")


def verdicts(samples: list[dict]) -> dict:
    first, last = samples[0], samples[-1]
    growth = last["rss_mib"] / first["rss_mib"] - 1
    jumps = [(b["rss_mib"] - a["rss_mib"], b["step"]) for a, b in zip(samples, samples[1:])]
    biggest = max(jumps) if jumps else (0.0, first["step"])
    return {
        "compared": [first["step"], last["step"]],
        "rss": {"first_mib": first["rss_mib"], "last_mib": last["rss_mib"], "growth": round(growth, 4),
                "target": f"<= {RSS_TOLERANCE:.0%}", "met": growth <= RSS_TOLERANCE,
                "largest_increase_mib": round(biggest[0], 2), "largest_increase_by_step": biggest[1]},
        "open_fds": {"first": first["open_fds"], "last": last["open_fds"], "target": "no growth",
                     "met": last["open_fds"] <= first["open_fds"]},
        "threads": {"first_python": first["threads_python"], "last_python": last["threads_python"],
                    "first_os": first["threads_os"], "last_os": last["threads_os"], "target": "no growth",
                    "met": last["threads_python"] <= first["threads_python"] and last["threads_os"] <= first["threads_os"]},
    }


def trace_diff(first, last, top: int = 15) -> list[dict]:
    stats = last.compare_to(first, "traceback")
    return [{"size_diff_kib": round(s.size_diff / 1024, 1), "count_diff": s.count_diff,
             "where": [f"{fr.filename}:{fr.lineno}" for fr in s.traceback][-4:]} for s in stats[:top]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--every", type=int, default=500, help="sampling interval in steps")
    ap.add_argument("--run-dir", type=Path, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--json", type=Path, help="write every sample, the verdicts and the machine here")
    ap.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slower)")
    ap.add_argument("--quiet", action="store_true", help="do not echo the loop's messages (its progress line still goes to stderr)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        ap.error("--steps and --every must be at least 1")

    import torch

    from bicycle.bench.common import machine_meta, write_json
    from bicycle.ops import pick_device
    from bicycle.config import PRESETS, replace
    from bicycle.plugins import build_plugins
    from bicycle.train.loop import train

    base = PRESETS["demo"]
    log_every = base.train.log_every if args.every % base.train.log_every == 0 else math.gcd(args.every, base.train.log_every)
    cfg = replace(base, {"train.steps": args.steps, "train.log_every": log_every})
    observer = SoakObserver(args.every, args.steps, args.tracemalloc)
    plugins = build_plugins([observer], autoload=False)
    echo = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    device = pick_device(cfg.train.device).type
    meta = machine_meta(device)
    print(f"soak: demo preset, {args.steps} steps, sample every {args.every} (log_every {log_every}), "
          f"device {device}, {torch.get_num_threads()} threads, load {meta['loadavg_1m']}", flush=True)
    print(HEADER, flush=True)

    tmp = None
    run_dir = args.run_dir
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bicycle-soak-")
        run_dir = Path(tmp.name) / "run"
    try:
        t0 = time.perf_counter()
        result = train(cfg, run_dir, plugins=plugins, echo=echo)
        seconds = time.perf_counter() - t0
        after = {"step": result.step, **measure()}  # after the final report (evaluation) too
    finally:
        if tmp is not None:
            tmp.cleanup()
    if not observer.samples:
        print("no samples recorded", file=sys.stderr)
        return 1

    v = verdicts(observer.samples)
    first_fds, last_fds = set(observer.fds_first or []), list(observer.fds_last or [])
    extra_fds = [f for f in last_fds if f not in first_fds]
    data = {
        "benchmark": "soak", "preset": "demo", "steps": args.steps, "every": args.every, "log_every": log_every,
        "interrupted": result.interrupted, "train_seconds": round(seconds, 1),
        "machine": meta, "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "before_first_step": observer.before, "samples": observer.samples, "after_train_returned": after,
        "fds_at_first_sample": observer.fds_first, "fds_new_at_last_sample": extra_fds,
        "verdicts": v, "all_met": all(v[k]["met"] for k in ("rss", "open_fds", "threads")),
        "note": "sec_per_step: wall time over the window since the previous sample (includes the sample grid and "
                "checkpoint written every 500 steps); the machine is shared, so step times are noisy; the targets are "
                "about RSS, open files and threads",
    }
    if observer.snap_first is not None and observer.snap_last is not None:
        data["tracemalloc_top_growth"] = trace_diff(observer.snap_first, observer.snap_last)
        tracemalloc.stop()
    if args.json:
        write_json(args.json, data)

    print(f"after train() returned (final report included): RSS {after['rss_mib']:.1f} MiB, HWM {after['hwm_mib']:.1f} MiB, "
          f"fds {after['open_fds']}, threads {after['threads_python']}/{after['threads_os']}")
    r, f, t = v["rss"], v["open_fds"], v["threads"]
    print(f"RSS    step {v['compared'][0]} -> {v['compared'][1]}: {r['first_mib']:.1f} -> {r['last_mib']:.1f} MiB "
          f"({r['growth']:+.1%}, target {r['target']}): {'met' if r['met'] else 'NOT met'}; largest rise "
          f"{r['largest_increase_mib']:+.1f} MiB by step {r['largest_increase_by_step']}")
    print(f"fds    {f['first']} -> {f['last']}: {'met' if f['met'] else 'NOT met'}" + (f" (new: {extra_fds})" if extra_fds else ""))
    print(f"thread python {t['first_python']} -> {t['last_python']}, os {t['first_os']} -> {t['last_os']}: "
          f"{'met' if t['met'] else 'NOT met'}")
    print(f"trained {result.step} steps in {seconds / 60:.1f} min" + (f"; JSON: {args.json}" if args.json else ""))
    return 0 if data["all_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
