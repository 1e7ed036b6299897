"""Kernel benchmark: every fused op and impl against the eager reference, in one run.

Per (op, pass, impl, dtype, size): median / p10 / p90 time, bytes moved (the reads + writes of a
one-pass forward and a one-pass backward, the same count for every impl: reparam_kl fwd 4n, fwd_bwd
10n; lsgan fwd n, fwd_bwd 3n; prepare_batch crop bytes + 4x that in float32), GB/s, the same-size torch copy bandwidth and each kernel's fraction
of it, and the speed-up over the reference. Impls are timed round-robin, so drift on a shared machine
hits them alike; compare ratios within one run, not absolute times across runs.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import click
import torch

DEFAULT_SIZES = [1 << 16, 1 << 20, 1 << 22]
QUICK_SIZES = [1 << 16, 1 << 20]


def _timer(device: str) -> Callable[[Callable[[], object]], float]:
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


def _time_round_robin(fns: dict[str, Callable[[], object]], device: str, reps: int, warmup: int) -> dict[str, list[float]]:
    timer = _timer(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timer(fn))
    return times


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _copy_gbps(nbytes: int, device: str, reps: int) -> float:
    """Bandwidth of a same-size torch copy (read + write), the yardstick for memory-bound kernels."""
    n = max(1, nbytes // 8)  # a copy of n float32 moves 2 * 4 * n bytes, about nbytes
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(_time_round_robin({"copy": lambda: dst.copy_(src)}, device, reps, 3)["copy"])
    return 8 * n / (ms * 1e-3) / 1e9


def _lsgan_shapes(total: int) -> list[tuple[int, ...]]:
    """Two PatchGAN scales (the second a quarter of the first) holding about ``total`` elements."""
    batch = max(1, total // 16384)
    h = max(1, round(math.sqrt(total * 0.8 / batch)))
    return [(batch, 1, h, h), (batch, 1, max(1, h // 2), max(1, h // 2))]


def _cases(size: int, device: str, dtype: torch.dtype, impls: list[str]):
    """Yield (op, pass, shape, bytes, {impl: fn}) for one size."""
    from bicycle import ops

    es = torch.tensor([], dtype=dtype).element_size()
    mk = lambda shape, grad=False: torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)  # noqa: E731
    nz = 8
    shape = (max(1, size // nz), nz)
    n = shape[0] * nz
    mu, lv, eps, gz = mk(shape, True), mk(shape, True), mk(shape), mk(shape)
    gkl = torch.ones((), device=device, dtype=dtype)
    fwd = {i: (lambda i=i: ops.reparam_kl(mu.detach(), lv.detach(), eps, 0.01, impl=i)) for i in impls}
    yield "reparam_kl", "fwd", list(shape), 4 * n * es, fwd
    both = {
        i: (lambda i=i: torch.autograd.grad(ops.reparam_kl(mu, lv, eps, 0.01, impl=i), (mu, lv), (gz, gkl)))
        for i in impls
    }
    yield "reparam_kl", "fwd_bwd", list(shape), 10 * n * es, both

    shapes = _lsgan_shapes(size)
    preds = [mk(s, True) for s in shapes]
    n = sum(p.numel() for p in preds)
    fwd = {i: (lambda i=i: ops.lsgan([p.detach() for p in preds], 1.0, impl=i)) for i in impls}
    yield "lsgan", "fwd", [list(s) for s in shapes], n * es, fwd
    both = {i: (lambda i=i: torch.autograd.grad(ops.lsgan(preds, 1.0, impl=i), preds)) for i in impls}
    yield "lsgan", "fwd_bwd", [list(s) for s in shapes], 3 * n * es, both

    half = _lsgan_shapes(max(1, size // 2))
    fake, real = [mk(s, True) for s in half], [mk(s, True) for s in half]
    n = 2 * sum(p.numel() for p in fake)
    both = {i: (lambda i=i: torch.autograd.grad(ops.lsgan_d(fake, real, impl=i), fake + real)) for i in impls}
    yield "lsgan_d", "fwd_bwd", [list(s) for s in half] * 2, 3 * n * es, both


def _prepare_case(size: int):
    """prepare_batch (CPU only): 256-px crops of 286-px images, as many as make about ``size`` outputs."""
    from bicycle import ops

    crop = 256 if size >= 3 * 256 * 256 else max(1, int(math.sqrt(size / 3)))
    full = crop + crop // 8
    n = max(1, size // (3 * crop * crop))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, full, full, 3), dtype=torch.uint8, generator=g)
    top = torch.randint(0, full - crop + 1, (n,), generator=g)
    left = torch.randint(0, full - crop + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    fns = {i: (lambda i=i: ops.prepare_batch(images, top, left, flip, crop, impl=i)) for i in ("ref", "cpp")}
    out_elems = n * 3 * crop * crop
    return [n, full, full, 3], out_elems * (1 + 4), fns


def _triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


def git_commit() -> str | None:
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


def run_kernel_bench(device: str = "cpu", sizes: list[int] | None = None, json_path: str | None = None,
                     quick: bool = False) -> list[dict]:
    """Benchmark every op x impl x size on ``device`` ("cpu" or "cuda"); optionally write JSON. Returns the records."""
    from bicycle import ops

    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench: device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ops.OpUnavailableError("bench: device 'cuda' requested but torch sees no CUDA device")
    sizes = sizes or (QUICK_SIZES if quick else DEFAULT_SIZES)
    reps, warmup = (7, 2) if quick else (25, 3)
    fused = "triton" if device == "cuda" else "cpp"
    impls = ["ref"] + ([fused] if ops.unavailable_reason(fused, device, "reparam_kl") is None else [])
    dtypes = [torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32]
    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else _cpu_name(),
        "torch": torch.__version__, "triton": _triton_version(), "threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    records: list[dict] = []

    def add(op, pss, dtype, shape, size, nbytes, times, copy_gbps):
        ref_ms = statistics.median(times["ref"])
        for impl, ts in times.items():
            med = statistics.median(ts)
            gbps = nbytes / (med * 1e-3) / 1e9
            records.append({
                "op": op, "impl": impl, "pass": pss, "dtype": str(dtype).removeprefix("torch."), "shape": shape,
                "size": size, "bytes": nbytes, "median_ms": med, "p10_ms": _quantile(ts, 0.1),
                "p90_ms": _quantile(ts, 0.9), "gbps": gbps, "copy_gbps": copy_gbps, "frac_of_copy": gbps / copy_gbps,
                "speedup_vs_ref": ref_ms / med, **meta,
            })

    for size in sizes:
        for dtype in dtypes:
            for op, pss, shape, nbytes, fns in _cases(size, device, dtype, impls):
                times = _time_round_robin(fns, device, reps, warmup)
                add(op, pss, dtype, shape, size, nbytes, times, _copy_gbps(nbytes, device, reps))
        if device == "cpu" and "cpp" in impls:
            shape, nbytes, fns = _prepare_case(size)
            times = _time_round_robin(fns, device, max(3, reps // 3), 1)
            add("prepare_batch", "fwd", torch.uint8, shape, size, nbytes, times, _copy_gbps(nbytes, device, reps))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
    return records


def format_table(records: list[dict]) -> str:
    """Plain-text table of bench records."""
    head = f"{'op':<14}{'pass':<9}{'impl':<7}{'dtype':<9}{'size':>9}{'median ms':>11}{'p10':>9}{'p90':>9}" \
           f"{'GB/s':>8}{'copy':>8}{'frac':>6}{'x ref':>7}"
    lines = [head]
    for r in records:
        lines.append(
            f"{r['op']:<14}{r['pass']:<9}{r['impl']:<7}{r['dtype']:<9}{r['size']:>9}{r['median_ms']:>11.3f}"
            f"{r['p10_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['gbps']:>8.2f}{r['copy_gbps']:>8.1f}{r['frac_of_copy']:>6.2f}"
            f"{r['speedup_vs_ref']:>7.2f}"
        )
    if records:
        r = records[0]
        lines.append(f"device {r['device']} ({r['device_name']}), threads {r['threads']}, torch {r['torch']}, "
                     f"triton {r['triton']}, commit {r['commit']}")
    return "\n".join(lines)


@click.command("bench")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the records here.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when present, else cpu.")
@click.option("--quick", is_flag=True, help="Fewer sizes and repetitions.")
@click.option("--size", "sizes", type=int, multiple=True, help="Elements per op (repeatable).")
@click.option("--step", is_flag=True, help="Training-step bench: eager reference vs fast mode (CUDA graphs on CUDA).")
@click.option("--batch-size", "batch_sizes", type=int, multiple=True, help="--step: batch sizes (default 2, 8, 32 on CUDA).")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "bf16"]), multiple=True,
              help="--step on CUDA: fast-mode precisions (default fp32 and bf16).")
@click.option("--graph-ops", is_flag=True, help="Fused ops at the paper's shapes: us/call eager and under graph replay (CUDA).")
@click.option("--prep", is_flag=True, help="prepare_batch cpp vs ref: CPU training steps/s at 64 px.")
def bench(json_path: str | None, device: str, quick: bool, sizes: tuple[int, ...], step: bool,
          batch_sizes: tuple[int, ...], precisions: tuple[str, ...], graph_ops: bool, prep: bool) -> None:
    """Benchmark the fused ops against the eager reference (median, p10/p90, GB/s, speed-up);
    with --step the whole training step, with --graph-ops the ops under graph replay, with --prep the
    batch preparation's effect on CPU training."""
    from bicycle.ops import OpUnavailableError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if any(s < 1 for s in sizes):
        raise click.UsageError("--size must be >= 1")
    if sum((step, graph_ops, prep)) > 1:
        raise click.UsageError("choose one of --step, --graph-ops, --prep")
    if any(n < 2 or n % 2 for n in batch_sizes):
        raise click.UsageError("--batch-size must be even and >= 2 (the step splits each batch in halves)")
    try:
        if step:
            from bicycle.benchstep import run_step_bench
            if device == "cpu":
                click.echo("bench --step on cpu: eager reference vs eager with the fused C++ ops (no CUDA graphs on CPU; "
                           "scaled-down model, see the records)")
            run_step_bench(device, list(batch_sizes) or None, json_path, quick, list(precisions) or None, echo=click.echo)
        elif graph_ops:
            from bicycle.benchstep import GRAPH_OPS_NOTE, run_graph_ops_bench
            records = run_graph_ops_bench(device, json_path)
            if not records:
                click.echo(GRAPH_OPS_NOTE)
            for r in records:
                click.echo(f"{r['op']:<11}{r['impl']:<7}eager {r['us_per_call_eager']:8.1f} us  graph {r['us_per_call_graph']:8.1f} us"
                           f"  kernels/call {r['kernels_per_call']}")
        elif prep:
            from bicycle.benchstep import format_prep_table, run_prep_bench
            if device != "cpu":
                raise click.UsageError("--prep measures CPU training: use --device cpu")
            click.echo(format_prep_table(run_prep_bench(steps=3 if quick else 8, json_path=json_path)))
        else:
            records = run_kernel_bench(device, list(sizes) or None, json_path, quick)
            click.echo(format_table(records))
    except OpUnavailableError as exc:
        raise click.UsageError(str(exc)) from exc
    if json_path:
        click.echo(f"wrote {json_path}")
