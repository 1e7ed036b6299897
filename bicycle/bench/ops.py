"""Fused-op benchmarks. ``bicycle bench``: every fused op and impl against the eager reference, in one run.

Per (op, pass, impl, dtype, size): median / p10 / p90 time, bytes moved (the reads + writes of a
one-pass forward and a one-pass backward, the same count for every impl: reparam_kl fwd 4n, fwd_bwd
10n; lsgan fwd n, fwd_bwd 3n; prepare_batch crop bytes + 4x that in float32), GB/s, the same-size torch copy bandwidth and each kernel's fraction
of it, and the speed-up over the reference. Impls are timed round-robin, so drift on a shared machine
hits them alike; compare ratios within one run, not absolute times across runs.

``bicycle bench --graph-ops`` (CUDA only): each op (fwd+bwd) at the paper's shapes, us per call eager and
under graph replay, kernels per call.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from bicycle.bench.common import (copy_gbps, machine_meta, measured, profile_kernels, quantile, time_round_robin,
                                  write_json)

DEFAULT_SIZES = [1 << 16, 1 << 20, 1 << 22]
QUICK_SIZES = [1 << 16, 1 << 20]


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


def _records(op: str, pss: str, dtype: torch.dtype, shape, size: int, nbytes: int, times: dict[str, list[float]],
             copy: float, meta: dict) -> list[dict]:
    ref_ms = statistics.median(times["ref"])
    out = []
    for impl, ts in times.items():
        med = statistics.median(ts)
        gbps = nbytes / (med * 1e-3) / 1e9
        out.append({
            "op": op, "impl": impl, "pass": pss, "dtype": str(dtype).removeprefix("torch."), "shape": shape,
            "size": size, "bytes": nbytes, "median_ms": med, "p10_ms": quantile(ts, 0.1),
            "p90_ms": quantile(ts, 0.9), "gbps": gbps, "copy_gbps": copy, "frac_of_copy": gbps / copy,
            "speedup_vs_ref": ref_ms / med, **meta,
        })
    return out


def _size_records(size: int, dtype: torch.dtype, device: str, impls: list[str], reps: int, warmup: int,
                  meta: dict) -> list[dict]:
    out = []
    for op, pss, shape, nbytes, fns in _cases(size, device, dtype, impls):
        times = time_round_robin(fns, device, reps, warmup)
        out += _records(op, pss, dtype, shape, size, nbytes, times, copy_gbps(nbytes, device, reps), meta)
    if device == "cpu" and "cpp" in impls:
        shape, nbytes, fns = _prepare_case(size)
        times = time_round_robin(fns, device, max(3, reps // 3), 1)
        out += _records("prepare_batch", "fwd", torch.uint8, shape, size, nbytes, times,
                        copy_gbps(nbytes, device, reps), meta)
    return out


def run_kernel_bench(device: str = "cpu", sizes: list[int] | None = None, json_path: str | None = None,
                     quick: bool = False, keep_going: bool = False) -> list[dict]:
    """Benchmark every op x impl x size on ``device`` ("cpu" or "cuda"); optionally write JSON (after each
    size and dtype). ``keep_going``: a failing size/dtype becomes a record with ``error``. Returns the records."""
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
    meta = machine_meta(device)
    records: list[dict] = []
    for size in sizes:
        for dtype in dtypes:
            key = {"op": "*", "size": size, "dtype": str(dtype).removeprefix("torch.")}
            records += measured(key, lambda: _size_records(size, dtype, device, impls, reps, warmup, meta), keep_going)
            if json_path:
                write_json(json_path, {"meta": meta, "records": records})
    return records


def format_table(records: list[dict]) -> str:
    """Plain-text table of bench records."""
    head = f"{'op':<14}{'pass':<9}{'impl':<7}{'dtype':<9}{'size':>9}{'median ms':>11}{'p10':>9}{'p90':>9}" \
           f"{'GB/s':>8}{'copy':>8}{'frac':>6}{'x ref':>7}"
    lines = [head]
    for r in records:
        if "error" in r:
            lines.append(f"{r['op']:<14}{'':<9}{'':<7}{r.get('dtype', ''):<9}{r.get('size', ''):>9}  error: "
                         f"{r['error'].splitlines()[-1]}")
            continue
        lines.append(
            f"{r['op']:<14}{r['pass']:<9}{r['impl']:<7}{r['dtype']:<9}{r['size']:>9}{r['median_ms']:>11.3f}"
            f"{r['p10_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['gbps']:>8.2f}{r['copy_gbps']:>8.1f}{r['frac_of_copy']:>6.2f}"
            f"{r['speedup_vs_ref']:>7.2f}"
        )
    ok = [r for r in records if "error" not in r]
    if ok:
        r = ok[0]
        lines.append(f"device {r['device']} ({r['device_name']}), threads {r['threads']}, torch {r['torch']}, "
                     f"triton {r['triton']}, commit {r['commit']}")
    return "\n".join(lines)


# -- fused ops at the paper's shapes: eager vs graph replay (CUDA only) ----------------------------

def paper_op_shapes(device: str = "cpu", batch_size: int = 2) -> dict:
    """The shapes the fused ops see in the paper's configuration at ``batch_size`` (half per branch)."""
    from bicycle.nn.discriminator import MultiScaleDiscriminator

    half = batch_size // 2
    d = MultiScaleDiscriminator(3, 256, 64, 3, 2, "instance").to(device)
    with torch.no_grad():
        outs = d(torch.zeros(half, 3, 256, 256, device=device))
    return {"reparam_kl": [half, 8], "lsgan": [list(o.shape) for o in outs]}


GRAPH_OPS_NOTE = "GPU only: microseconds per call under CUDA-graph replay need a CUDA device (skipped here)"


def graph_op_cases(impl: str) -> Iterator[tuple[str, list, Callable[[], object]]]:
    """(op, shape, fwd+bwd closure) for each fused op at the paper's shapes on CUDA."""
    from bicycle import ops

    shapes = paper_op_shapes("cuda")
    mu = torch.randn(shapes["reparam_kl"], device="cuda", requires_grad=True)
    lv = torch.randn(shapes["reparam_kl"], device="cuda", requires_grad=True)
    eps = torch.randn(shapes["reparam_kl"], device="cuda")
    preds = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes["lsgan"]]
    reals = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes["lsgan"]]

    def rk():
        z, kl = ops.reparam_kl(mu, lv, eps, 0.01, impl=impl)
        return torch.autograd.grad((z.sum() + kl), (mu, lv))
    yield "reparam_kl", shapes["reparam_kl"], rk
    yield "lsgan", shapes["lsgan"], lambda: torch.autograd.grad(ops.lsgan(preds, 1.0, impl=impl), preds)
    yield "lsgan_d", shapes["lsgan"] * 2, lambda: torch.autograd.grad(ops.lsgan_d(preds, reals, impl=impl), preds + reals)


def measure_graph_op(op: str, impl: str, shape: list, fn: Callable[[], object], calls: int = 200) -> dict:
    """us per call of ``fn`` eager and replayed from a CUDA graph holding 10 calls; kernels per call."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    eager_us = (time.perf_counter() - t0) / calls * 1e6
    kernels, kernel_ms = profile_kernels(fn, 20)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    from bicycle.train.graph import capturing

    graph = torch.cuda.CUDAGraph()
    with capturing(graph):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls // 10):
        graph.replay()
    torch.cuda.synchronize()
    graph_us = (time.perf_counter() - t0) / calls * 1e6
    return {"op": op, "pass": "fwd_bwd", "impl": impl, "shape": shape, "us_per_call_eager": eager_us,
            "us_per_call_graph": graph_us, "kernels_per_call": kernels,
            "kernel_us_per_call": kernel_ms * 1e3 if kernel_ms else None, **machine_meta("cuda")}


def run_graph_ops_bench(device: str = "cuda", json_path: str | None = None, calls: int = 200,
                        keep_going: bool = False) -> list[dict]:
    """Per fused op (fwd+bwd) and impl at the paper's shapes: :func:`measure_graph_op`. CUDA only: on
    CPU returns [] and writes nothing (see GRAPH_OPS_NOTE). ``keep_going``: a failing case becomes a
    record with ``error`` and the others still run; the JSON is rewritten after every record."""
    if device != "cuda" or not torch.cuda.is_available():
        return []
    from bicycle import ops

    impls = ["ref"] + (["triton"] if ops.unavailable_reason("triton", "cuda", "lsgan") is None else [])
    records: list[dict] = []
    for impl in impls:
        for op, shape, fn in graph_op_cases(impl):
            records += measured({"op": op, "impl": impl, "shape": shape}, lambda: measure_graph_op(op, impl, shape, fn, calls),
                                keep_going)
            if json_path:
                write_json(json_path, {"records": records})
    return records
