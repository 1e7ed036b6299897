"""Training-step benchmark (``bicycle bench --step``).

Step bench, per batch size, in ONE run:
- ``eager``: the reference, written like the original implementation: plain modules and plain-PyTorch
  losses, separate backward calls, requires_grad toggling, non-capturable Adam, fp32, no capture.
- ``fast`` (CUDA only): :class:`bicycle.train.graph.GraphedStep` - the whole iteration replayed from a
  CUDA graph, fused Triton ops, capturable Adam with device lrs; in fp32 and in bf16 (autocast +
  channels_last).
- ``fused-eager``: the same step as ``fast`` (merged calls, fused ops: C++ on CPU, Triton on CUDA;
  fast Adam) run eagerly, so that the speed-up splits into "merged calls + fused ops" and "graph
  replay". On CUDA at batch 2 only. CPU numbers are labelled with ``graphs: false``.

Data: synthetic uint8 image pairs (pinned host memory on CUDA), copied to the device and normalised
into the step's input buffers each iteration; ``data_fraction`` = that time (host batch fetch + device
copy/normalise, timed with CUDA events) / the step time. Kernels per iteration and the sum of kernel
times come from torch.profiler over a few iterations (CUDA only).
"""
from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bicycle.bench.common import error_text, machine_meta, measured, profile_kernels, quantile, write_json

PAPER_BATCHES = [2, 8, 32]
REQUIRED_KEYS = ("mode", "batch_size", "precision", "ms_per_iter", "img_per_s", "speedup_vs_eager", "kernel_ms_per_iter",
                 "kernels_per_iter", "peak_mem_bytes", "data_fraction", "tf32", "device", "torch")


def step_config(device: str, batch_size: int, quick: bool):
    """The paper configuration on CUDA (256 px, unet256, inject all, ResNet E, two 2-scale PatchGAN D,
    instance norm, dropout, nz 8). On CPU a scaled-down one (same structure, 64 px / widths 16, or
    32 px / widths 8 with ``quick``): the paper's size takes ~5 s per step on 2 cores."""
    from bicycle.config import PRESETS, replace

    base = {"train.batch_size": batch_size, "net.dropout": True, "net.norm": "instance", "net.inject": "all",
            "net.encoder": "resnet", "net.nz": 8, "net.d_scales": 2, "train.model": "bicycle"}
    if device == "cuda":
        over = {"net.backbone": "unet256", "net.image_size": 256}
    elif quick:
        over = {"net.backbone": "unet", "net.image_size": 32, "net.ngf": 8, "net.nef": 8, "net.ndf": 8}
    else:
        over = {"net.backbone": "unet", "net.image_size": 64, "net.ngf": 16, "net.nef": 16, "net.ndf": 16}
    return replace(PRESETS["paper"], {**base, **over})


# -- measurement --------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _flags(device: str) -> dict:
    if device != "cuda":
        return {"cudnn": None, "matmul": None}
    return {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}


def bench_dataset(root: Path, batch_size: int, image_size: int):
    """A folder dataset as a user's (pix2pix layout, A|B PNGs, 1/8 larger than the crop, random crops and
    flips), ``2 * batch_size`` pairs (at least 8) written under ``root``, decoded once (the dataset's cache)."""
    from bicycle.data.aligned import AlignedDataset

    load = image_size + image_size // 8
    write_aligned_folder(root, max(8, 2 * batch_size), load)
    ds = AlignedDataset(root, "train", image_size, flip=True, load_size=load, progress=False)
    ds.get_batch(list(range(len(ds))))
    return ds


def write_aligned_folder(root: Path, count: int, size: int) -> Path:
    """``count`` random A|B pairs (``size`` x 2 ``size``, RGB PNG) in ``root/train``."""
    import numpy as np
    from PIL import Image

    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        arr = rng.integers(0, 256, (size, 2 * size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.png")
    return root


def measure_step(mode: str, cfg, device: str, precision: str, warmup: int, iters: int, profile_iters: int,
                 dataset) -> dict:
    """Build ``mode`` from scratch, warm it up, time ``iters`` iterations fed by the training loop's
    prefetcher over ``dataset`` (batch making included), profile a few (CUDA)."""
    from bicycle.build import resolve
    from bicycle.config import replace
    from bicycle.plugins import get_plugins
    from bicycle.train.data import BatchStream
    from bicycle.train.graph import GraphedStep
    from bicycle.train.prefetch import for_device as prefetcher_for
    from bicycle.train.reference import reference_step
    from bicycle.train.state import build_state

    gc.collect()  # the previous measurement's networks and graph, before this one's peak memory
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    registry = get_plugins().registry
    cfg = resolve(replace(cfg, {"train.precision": precision if mode != "eager" else "fp32"}), registry, dataset)
    n, s = cfg.train.batch_size, cfg.net.image_size
    graphs = mode == "fast" and device == "cuda"
    state = build_state(cfg, registry, device, plain_adam=mode == "eager")
    a_shape, b_shape = (n, cfg.net.in_channels, s, s), (n, cfg.net.out_channels, s, s)
    g = GraphedStep(state, a_shape, b_shape, cfg.net.nz, device, precision=cfg.train.precision, capture=graphs)
    g.set_lr_factor(1.0)
    if mode == "eager":
        def compute():
            return reference_step(state.nets, state.optimizers, g.a, g.b, cfg.net.nz, cfg.loss)
    else:
        def compute():
            return g.step()  # GraphedStep applies the precision's autocast itself
    cuda = device == "cuda"
    batches = prefetcher_for(BatchStream(dataset, n, cfg.train.seed), torch.device(device))

    def run_iter():
        g.load(*batches.next())
        return compute()

    with batches:
        for _ in range(warmup):
            run_iter()
        _sync(device)
        batches.wait_s = 0.0
        step_ms, data_ms = [], []
        if cuda:  # no sync inside the timed block: the host may run ahead, as in training
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters + 1)]
            t0 = time.perf_counter()
            for i in range(iters):
                ev[i][0].record()
                g.load(*batches.next())
                ev[i][1].record()
                compute()
            ev[iters][0].record()
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - t0) * 1e3 / iters
            step_ms = [ev[i][0].elapsed_time(ev[i + 1][0]) for i in range(iters)]
            data_ms = [ev[i][0].elapsed_time(ev[i][1]) for i in range(iters)]
            wait_fraction = synced_wait_fraction(batches, run_iter, min(iters, SYNCED_WAIT_ITERS))
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                g.load(*batches.next())
                t1 = time.perf_counter()
                compute()
                t2 = time.perf_counter()
                step_ms.append((t2 - t0) * 1e3)
                data_ms.append((t1 - t0) * 1e3)
            wall_ms = statistics.median(step_ms)
            wait_fraction = batches.wait_s * 1e3 / iters / wall_ms
        kernels, kernel_ms = (None, None)
        if cuda and profile_iters:
            kernels, kernel_ms = profile_kernels(run_iter, profile_iters)
    med = wall_ms
    peak = torch.cuda.max_memory_allocated() if cuda else None
    rec = {
        "mode": mode, "graphs": graphs, "batch_size": n, "precision": cfg.train.precision,
        "bf16": cfg.train.precision == "bf16", "channels_last": cfg.train.precision == "bf16",
        "impl": "ref (plain torch)" if mode == "eager" else ("triton" if cuda else "auto (cpp)"),
        "ms_per_iter": med, "p10_ms": quantile(step_ms, 0.1), "p90_ms": quantile(step_ms, 0.9),
        "img_per_s": n / (med * 1e-3), "speedup_vs_eager": None, "kernel_ms_per_iter": kernel_ms,
        "kernels_per_iter": kernels, "wall_over_kernel_time": (med / kernel_ms) if kernel_ms else None,
        "peak_mem_bytes": peak, "data_ms_per_iter": statistics.median(data_ms),
        "data_fraction": statistics.median(data_ms) / med, "data_wait_ms_per_iter": wait_fraction * med,
        "data_wait_fraction": wait_fraction, "prefetch": ("background thread, pinned, depth 2" + (", uint8 staging" if batches.uint8 else "")) if cuda else "inline",
        "tf32": _flags(device), "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "iters": iters, "image_size": s, "backbone": cfg.net.backbone, "ngf": cfg.net.ngf,
        "dataset": f"aligned folder: {len(dataset)} random {cfg.net.in_channels}-channel PNG pairs, random crops + flips",
        **machine_meta(device),
    }
    if cuda:
        rec["note"] = ("ms_per_iter: wall clock over the timed block / iters (p10/p90: per-iteration GPU timeline); "
                       "data_wait_fraction: with the device synchronised after every iteration (the host cannot "
                       "run ahead), the time spent waiting for the prefetcher's next batch / the wall time of those "
                       "iterations, i.e. the fraction of time the GPU would wait on data; data_fraction: GPU time from the iteration start to the batch being in "
                       "the step's buffers (H2D copy) / ms_per_iter")
    else:
        rec["note"] = ("CPU: eager only (no CUDA graphs on CPU); fused-eager = the training step with the C++ fused "
                       "ops; data_fraction: batch making (inline on CPU) / ms_per_iter")
    return rec


SYNCED_WAIT_ITERS = 10


def synced_wait_fraction(batches, run_iter: Callable[[], object], iters: int,
                         sync: Callable[[], None] = torch.cuda.synchronize) -> float:
    """Seconds ``batches.next()`` waited / wall seconds, over ``iters`` iterations with the device synchronised
    after each: the prefetcher gets exactly one step's time to make the next batch, so a wait is time the GPU
    would sit idle for data (without the sync the host runs ahead of the GPU and waits on the prefetcher
    even when the GPU never does)."""
    sync()
    batches.wait_s = 0.0
    t0 = time.perf_counter()
    for _ in range(iters):
        run_iter()
        sync()
    return batches.wait_s / max(time.perf_counter() - t0, 1e-9)


def run_step_bench(device: str = "cpu", batch_sizes: list[int] | None = None, json_path: str | None = None,
                   quick: bool = False, precisions: list[str] | None = None, echo: Callable[[str], None] | None = None,
                   keep_going: bool = False) -> list[dict]:
    """Eager reference vs fast mode at each batch size, in one run. Returns records (and writes JSON after
    each). ``keep_going``: a failing measurement becomes a record with ``error`` and the others still run."""
    import tempfile

    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench --step: device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        from bicycle.ops import OpUnavailableError
        raise OpUnavailableError("bench --step: device 'cuda' requested but torch sees no CUDA device")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # for every mode alike; TF32 stays at torch's defaults
    warmup, iters, prof = step_iters(device, quick)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bicycle-bench-") as tmp:
        for n in step_batches(device, batch_sizes, quick):
            cfg = step_config(device, n, quick)
            key = {"batch_size": n, "device": device}
            try:
                dataset = bench_dataset(Path(tmp) / f"b{n}", n, cfg.net.image_size)
            except Exception as exc:  # noqa: BLE001
                if not keep_going:
                    raise
                records.append({**key, "mode": "*", "error": error_text(exc)})
                continue
            eager_ms = None
            for mode, precision in step_modes(device, n, precisions):
                for rec in measured({**key, "mode": mode, "precision": precision},
                                    lambda: measure_step(mode, cfg, device, precision, warmup, iters, prof, dataset),
                                    keep_going):
                    if "error" not in rec:
                        if mode == "eager":
                            eager_ms = rec["ms_per_iter"]
                        rec["speedup_vs_eager"] = eager_ms / rec["ms_per_iter"] if eager_ms else None
                    records.append(rec)
                    if echo:
                        echo(format_step_table([rec], header=len(records) == 1))
                    if json_path:  # after every record: a run cut short by a timeout keeps what it measured
                        write_json(json_path, {"records": records})
    return records


def step_batches(device: str, batch_sizes: list[int] | None, quick: bool) -> list[int]:
    if batch_sizes:
        return list(batch_sizes)
    if device == "cuda":
        return [2] if quick else PAPER_BATCHES
    return [2] if quick else [2, 8]


def step_modes(device: str, batch_size: int, precisions: list[str] | None = None) -> list[tuple[str, str]]:
    """(mode, precision) in measuring order: the eager reference first (the speed-ups divide by it)."""
    if device != "cuda":
        return [("eager", "fp32"), ("fused-eager", "fp32")]
    fused = [("fused-eager", "fp32")] if batch_size == 2 else []
    return [("eager", "fp32")] + fused + [("fast", p) for p in (precisions or ["fp32", "bf16"])]


def step_iters(device: str, quick: bool) -> tuple[int, int, int]:
    """(warm-up, timed, profiled) iterations."""
    if device == "cuda":
        return (5, 10, 2) if quick else (6, 20, 3)
    return (1, 3, 0) if quick else (2, 8, 0)


def format_step_table(records: list[dict], header: bool = True) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else "-"
    lines = []
    if header:
        lines.append(f"{'mode':<12}{'graphs':<7}{'prec':<6}{'batch':>6}{'ms/iter':>10}{'img/s':>9}{'x eager':>8}"
                     f"{'kernels':>9}{'kern ms':>9}{'wall/kern':>10}{'peak MiB':>10}{'data %':>8}{'wait %':>8}")
    for r in records:
        if "error" in r:
            last = r["error"].splitlines()[-1]
            lines.append(f"{r.get('mode', '*'):<12}{'':<7}{r.get('precision', ''):<6}{r['batch_size']:>6}  error: {last}")
            continue
        peak = r["peak_mem_bytes"] / 2**20 if r["peak_mem_bytes"] else None
        lines.append(f"{r['mode']:<12}{str(r['graphs']):<7}{r['precision']:<6}{r['batch_size']:>6}{r['ms_per_iter']:>10.2f}"
                     f"{r['img_per_s']:>9.1f}{f(r['speedup_vs_eager'], '.2f'):>8}{f(r['kernels_per_iter'], '.0f'):>9}"
                     f"{f(r['kernel_ms_per_iter'], '.2f'):>9}{f(r['wall_over_kernel_time'], '.2f'):>10}"
                     f"{f(peak, '.0f'):>10}{100 * r['data_fraction']:>8.2f}{100 * r['data_wait_fraction']:>8.2f}")
    return "\n".join(lines)
