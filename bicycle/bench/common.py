"""What every benchmark shares: timing, quantiles, the machine and revision a record came from,
and atomic JSON writing (a run cut short keeps every record written so far)."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

# Written by benchmarks/gpu_prepare.sh before a tree is copied to a machine without git (see benchmarks/README.md):
# looked for in the checkout this package runs from, then in the working directory.
REVISION_NAME = "benchmarks/REVISION.json"


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn`` once and returns its time in ms (CUDA events on CUDA)."""
    if device == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def time_round_robin(fns: dict[str, Callable[[], object]], device: str, reps: int, warmup: int) -> dict[str, list[float]]:
    timer_fn = timer(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timer_fn(fn))
    return times


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def copy_gbps(nbytes: int, device: str, reps: int) -> float:
    """Bandwidth of a same-size torch copy (read + write), the yardstick for memory-bound kernels."""
    n = max(1, nbytes // 8)  # a copy of n float32 moves 2 * 4 * n bytes, about nbytes
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(time_round_robin({"copy": lambda: dst.copy_(src)}, device, reps, 3)["copy"])
    return 8 * n / (ms * 1e-3) / 1e9


def triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


def revision() -> dict:
    """{"commit": ..., "dirty": ...} from benchmarks/REVISION.json when a prepare step wrote it (a copied
    tree may have no .git), else from git; {"commit": None, "dirty": None} outside git."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        try:
            data = json.loads((root / REVISION_NAME).read_text())
            return {"commit": data.get("commit"), "dirty": data.get("dirty"), "source": REVISION_NAME}
        except (OSError, ValueError, AttributeError):
            continue
    commit = _git_head()
    dirty = None
    if commit is not None:
        try:
            out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5)
            dirty = bool(out.stdout.strip()) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            pass
    return {"commit": commit, "dirty": dirty, "source": "git" if commit else None}


def git_commit() -> str | None:
    """The commit of :func:`revision`."""
    return revision()["commit"]


def _git_head() -> str | None:
    """HEAD of the checkout this package runs from (an editable install), else of the working directory
    (a benchmark script run from the repository against an installed copy); None outside git."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


def loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_meta(device: str) -> dict:
    """Where and when a record was measured: device, versions, threads, load, revision."""
    rev = revision()
    return {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "triton": triton_version(), "threads": torch.get_num_threads(), "loadavg_1m": loadavg(),
            "commit": rev["commit"], "dirty": rev["dirty"], "date": now()}


def write_json(path: str | Path, data: object) -> None:
    """Write ``data`` as JSON atomically (a temporary file renamed over ``path``)."""
    from bicycle.io import atomic_write_bytes, writing

    path = Path(path)
    with writing(path):
        atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def profile_kernels(run_iter: Callable[[], object], iters: int) -> tuple[float | None, float | None]:
    """(kernels per iteration, kernel ms per iteration) from torch.profiler's CUDA activities."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run_iter()
        torch.cuda.synchronize()
    n, us = 0, 0.0
    for e in prof.events():
        if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name.lower()
        if name.startswith(("memcpy", "memset")):
            continue
        n += 1
        us += e.time_range.elapsed_us()
    if n == 0:
        return None, None
    return n / iters, us / 1e3 / iters


def error_text(exc: BaseException, lines: int = 8) -> str:
    """The last ``lines`` lines of ``exc``'s traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return "\n".join(text.rstrip().splitlines()[-lines:])


def measured(key: dict, fn: Callable[[], dict | list[dict]], keep_going: bool) -> list[dict]:
    """``fn``'s record(s) as a list; with ``keep_going`` an exception becomes ``[{**key, "error": ...}]``
    instead of propagating (so one failing measurement never loses the others)."""
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - reported in the record, by request
        if not keep_going:
            raise
        return [{**key, "error": error_text(exc)}]
    return out if isinstance(out, list) else [out]


def run_bicycle(args: list[str], log: Path, threads: int) -> None:
    """``python -m bicycle ARGS`` as a user runs it, with ``threads`` CPU threads, its output appended to ``log``;
    a failure stops the calling study (SystemExit naming the log)."""
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with log.open("a") as f:
        f.write(f"$ bicycle {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-m", "bicycle", *args], stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"bicycle {args[0]} exited with {r.returncode}; see {log}")
