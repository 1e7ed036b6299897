"""Training-step benchmark (``bicycle bench --step``), the fused ops under graph replay
(``bicycle bench --graph-ops``) and the batch-preparation op's effect on CPU steps/s (``--prep``).

Step bench, per batch size, in ONE run:
- ``eager``: the reference, written like the original implementation: plain modules and plain-PyTorch
  losses, separate backward calls, requires_grad toggling, non-capturable Adam, fp32, no capture.
- ``fast`` (CUDA only): :class:`bicycle.train.graph.GraphedStep` - the whole iteration replayed from a
  CUDA graph, fused Triton ops, capturable Adam with device lrs; in fp32 and in bf16 (autocast +
  channels_last).
- ``fused-eager`` (CPU only): ``train_step`` with the fused C++ ops, eager. Never graph-replayed: CPU
  numbers are labelled with ``graphs: false``.

Data: synthetic uint8 image pairs (pinned host memory on CUDA), copied to the device and normalised
into the step's input buffers each iteration; ``data_fraction`` = that time (host batch fetch + device
copy/normalise, timed with CUDA events) / the step time. Kernels per iteration and the sum of kernel
times come from torch.profiler over a few iterations (CUDA only).
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

PAPER_BATCHES = [2, 8, 32]
REQUIRED_KEYS = ("mode", "batch_size", "precision", "ms_per_iter", "img_per_s", "speedup_vs_eager", "kernel_ms_per_iter",
                 "kernels_per_iter", "peak_mem_bytes", "data_fraction", "tf32", "device", "torch")


# -- configuration -------------------------------------------------------------------------------

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


def _build(cfg, device: str, capturable: bool):
    from bicycle.plugins import get_plugins
    from bicycle.train.build import base_lrs, build_networks, resolve

    reg = get_plugins().registry
    cfg = resolve(cfg, reg)
    torch.manual_seed(cfg.train.seed)
    nets = build_networks(cfg, reg)
    for _, m in nets.items():
        m.to(device).train()
    o = cfg.optim
    lrs = base_lrs(cfg, [name for name, _ in nets.items()])
    opts = {name: torch.optim.Adam(m.parameters(), lr=lrs[name], betas=(o.beta1, o.beta2), capturable=capturable)
            for name, m in nets.items()}
    return cfg, nets, opts


# -- data ----------------------------------------------------------------------------------------

class SyntheticPairs:
    """A few pre-generated uint8 (A, B) batches [N, 3, S, S] (pinned on CUDA), served round-robin."""

    def __init__(self, batch_size: int, size: int, device: str, n: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        pin = device == "cuda"
        self.batches = []
        for _ in range(n):
            a, b = (torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=g) for _ in range(2))
            self.batches.append((a.pin_memory(), b.pin_memory()) if pin else (a, b))
        self.i = 0

    def next(self) -> tuple[Tensor, Tensor]:
        self.i += 1
        return self.batches[self.i % len(self.batches)]


def to_device_images(src: Tensor, dst: Tensor) -> None:
    """uint8 [0, 255] host images -> float [-1, 1] in ``dst`` (device), converted on the device."""
    dst.copy_(src.to(dst.device, non_blocking=True)).mul_(2.0 / 255.0).sub_(1.0)


# -- the eager reference, written like the original ----------------------------------------------

def _set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def _lsgan(preds, target: float) -> Tensor:
    return sum(torch.mean((p - target) ** 2) for p in preds)


def reference_step(nets, opts, a: Tensor, b: Tensor, nz: int, w) -> dict[str, Tensor]:
    """One BicycleGAN iteration as the original writes it (plain torch, separate backward calls)."""
    G, E, D, D2 = nets.G, nets.E, nets.D, nets.D2
    half = a.shape[0] // 2
    a1, b1, b2 = a[:half], b[:half], b[half:]
    device = a.device
    # forward (the original draws z on the host and moves it)
    mu, logvar = E(b1)
    eps = torch.randn(half, nz).to(device)
    z_enc = eps * torch.exp(0.5 * logvar) + mu
    z_rand = torch.randn(half, nz).to(device)
    fake_enc = G(a1, z_enc)
    fake_rand = G(a1, z_rand)
    # update G and E
    _set_requires_grad([D, D2], False)
    opts["E"].zero_grad()
    opts["G"].zero_grad()
    loss_gan = w.gan * _lsgan(D(fake_enc), 1.0)
    loss_gan2 = w.gan2 * _lsgan(D2(fake_rand), 1.0)
    loss_kl = torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * (-0.5 * w.kl)
    loss_l1 = w.l1 * torch.mean(torch.abs(fake_enc - b1))
    (loss_gan + loss_gan2 + loss_l1 + loss_kl).backward(retain_graph=True)
    _set_requires_grad([E], False)  # G alone
    mu2, _ = E(fake_rand)
    loss_z = w.z * torch.mean(torch.abs(mu2 - z_rand))
    loss_z.backward()
    _set_requires_grad([E], True)
    opts["E"].step()
    opts["G"].step()
    # update D and D2
    _set_requires_grad([D, D2], True)
    out = {"G_GAN": loss_gan.detach(), "G_GAN2": loss_gan2.detach(), "G_L1": loss_l1.detach(), "kl": loss_kl.detach(),
           "z_L1": loss_z.detach()}
    for name, net, fake, real in (("D", D, fake_enc, b1), ("D2", D2, fake_rand, b2)):
        opts[name].zero_grad()
        loss_d = _lsgan(net(fake.detach()), 0.0) + _lsgan(net(real), 1.0)
        loss_d.backward()
        opts[name].step()
        out[name] = loss_d.detach()
    return out


# -- measurement helpers -------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _profile_kernels(run_iter, iters: int) -> tuple[float | None, float | None]:
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


def _flags(device: str) -> dict:
    if device != "cuda":
        return {"cudnn": None, "matmul": None}
    return {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from bicycle.bench import _cpu_name
    return _cpu_name()


def _measure(mode: str, cfg, device: str, precision: str, warmup: int, iters: int, profile_iters: int) -> dict:
    """Build ``mode`` from scratch, warm it up, time ``iters`` iterations (data included), profile a few."""
    from bicycle.models import MODELS, Objective
    from bicycle.train.build import base_lrs
    from bicycle.train.graph import GraphedStep, prepare_networks
    from bicycle.train.step import TrainState

    n, s = cfg.train.batch_size, cfg.net.image_size
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    data = SyntheticPairs(n, s, device)
    graphs = mode == "fast" and device == "cuda"
    cfg, nets, opts = _build(cfg, device, capturable=graphs)
    if mode == "eager":
        a_buf = torch.empty(n, 3, s, s, device=device)
        b_buf = torch.empty_like(a_buf)

        def load(a_u8, b_u8):
            to_device_images(a_u8, a_buf)
            to_device_images(b_u8, b_buf)

        def compute():
            return reference_step(nets, opts, a_buf, b_buf, cfg.net.nz, cfg.loss)
    else:
        prepare_networks(nets, precision)
        state = TrainState(nets, opts, MODELS["bicycle"], Objective(cfg.loss, cfg.net.gan_mode, "auto"))
        base = base_lrs(cfg, opts)
        g = GraphedStep(state, (n, 3, s, s), (n, 3, s, s), cfg.net.nz, device, base, precision=precision,
                        capture=graphs)
        g.set_lr_factor(1.0)

        def load(a_u8, b_u8):
            to_device_images(a_u8, g.a)
            to_device_images(b_u8, g.b)

        def compute():
            return g.step()  # GraphedStep applies the precision's autocast itself

    def run_iter():
        load(*data.next())
        return compute()

    for _ in range(warmup):
        run_iter()
    _sync(device)
    step_ms, data_ms = [], []
    if device == "cuda":  # no sync inside the timed block: the host may run ahead, as in training
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters + 1)]
        t0 = time.perf_counter()
        for i in range(iters):
            ev[i][0].record()
            load(*data.next())
            ev[i][1].record()
            compute()
        ev[iters][0].record()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / iters
        step_ms = [ev[i][0].elapsed_time(ev[i + 1][0]) for i in range(iters)]
        data_ms = [ev[i][0].elapsed_time(ev[i][1]) for i in range(iters)]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            load(*data.next())
            t1 = time.perf_counter()
            compute()
            t2 = time.perf_counter()
            step_ms.append((t2 - t0) * 1e3)
            data_ms.append((t1 - t0) * 1e3)
        wall_ms = statistics.median(step_ms)
    kernels, kernel_ms = (None, None)
    if device == "cuda" and profile_iters:
        kernels, kernel_ms = _profile_kernels(run_iter, profile_iters)
    med = wall_ms
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    from bicycle.bench import git_commit, _triton_version
    rec = {
        "mode": mode, "graphs": graphs, "batch_size": n, "precision": precision,
        "bf16": precision == "bf16", "channels_last": precision == "bf16",
        "impl": "ref (plain torch)" if mode == "eager" else ("triton" if device == "cuda" else "auto (cpp)"),
        "ms_per_iter": med, "p10_ms": _q(step_ms, 0.1), "p90_ms": _q(step_ms, 0.9), "img_per_s": n / (med * 1e-3),
        "speedup_vs_eager": None, "kernel_ms_per_iter": kernel_ms, "kernels_per_iter": kernels,
        "wall_over_kernel_time": (med / kernel_ms) if kernel_ms else None,
        "peak_mem_bytes": peak, "data_ms_per_iter": statistics.median(data_ms),
        "data_fraction": statistics.median(data_ms) / med, "tf32": _flags(device),
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device == "cuda" else None,
        "iters": iters, "image_size": s, "backbone": cfg.net.backbone, "ngf": cfg.net.ngf,
        "device": device, "device_name": _device_name(device), "torch": torch.__version__,
        "triton": _triton_version(), "threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        rec["note"] = ("ms_per_iter: wall clock over the timed block / iters (p10/p90: per-iteration GPU timeline); "
                       "data_fraction: GPU time from the iteration start to the batch being in the step's buffers "
                       "(host fetch gap + H2D copy + normalise) / ms_per_iter")
    else:
        rec["note"] = "CPU: eager only (no CUDA graphs on CPU); fused-eager = train_step with the C++ fused ops"
    del data, nets, opts
    gc.collect()
    return rec


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def run_step_bench(device: str = "cpu", batch_sizes: list[int] | None = None, json_path: str | None = None,
                   quick: bool = False, precisions: list[str] | None = None, echo=None) -> list[dict]:
    """Eager reference vs fast mode at each batch size, in one run. Returns records (and writes JSON)."""
    import json

    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench --step: device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        from bicycle.ops import OpUnavailableError
        raise OpUnavailableError("bench --step: device 'cuda' requested but torch sees no CUDA device")
    if device == "cuda":
        batch_sizes = batch_sizes or ([2] if quick else PAPER_BATCHES)
        precisions = precisions or ["fp32", "bf16"]
        modes = [("eager", "fp32")] + [("fast", p) for p in precisions]
        warmup, iters, prof = (5, 10, 2) if quick else (6, 20, 3)
        torch.backends.cudnn.benchmark = True  # for every mode alike; TF32 stays at torch's defaults
    else:
        batch_sizes = batch_sizes or ([2] if quick else [2, 8])
        modes = [("eager", "fp32"), ("fused-eager", "fp32")]
        warmup, iters, prof = (1, 3, 0) if quick else (2, 8, 0)
    records = []
    for n in batch_sizes:
        cfg = step_config(device, n, quick)
        eager_ms = None
        for mode, precision in modes:
            rec = _measure(mode, cfg, device, precision, warmup, iters, prof)
            if mode == "eager":
                eager_ms = rec["ms_per_iter"]
            rec["speedup_vs_eager"] = eager_ms / rec["ms_per_iter"] if eager_ms else None
            records.append(rec)
            if echo:
                echo(format_step_table([rec], header=not records[:-1]))
            if json_path:  # after every record: a run cut short by a timeout keeps what it measured
                Path(json_path).parent.mkdir(parents=True, exist_ok=True)
                Path(json_path).write_text(json.dumps({"records": records}, indent=1) + "\n")
    return records


def format_step_table(records: list[dict], header: bool = True) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else "-"
    lines = []
    if header:
        lines.append(f"{'mode':<12}{'graphs':<7}{'prec':<6}{'batch':>6}{'ms/iter':>10}{'img/s':>9}{'x eager':>8}"
                     f"{'kernels':>9}{'kern ms':>9}{'wall/kern':>10}{'peak MiB':>10}{'data %':>8}")
    for r in records:
        peak = r["peak_mem_bytes"] / 2**20 if r["peak_mem_bytes"] else None
        lines.append(f"{r['mode']:<12}{str(r['graphs']):<7}{r['precision']:<6}{r['batch_size']:>6}{r['ms_per_iter']:>10.2f}"
                     f"{r['img_per_s']:>9.1f}{f(r['speedup_vs_eager'], '.2f'):>8}{f(r['kernels_per_iter'], '.0f'):>9}"
                     f"{f(r['kernel_ms_per_iter'], '.2f'):>9}{f(r['wall_over_kernel_time'], '.2f'):>10}"
                     f"{f(peak, '.0f'):>10}{100 * r['data_fraction']:>8.2f}")
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


def run_graph_ops_bench(device: str = "cuda", json_path: str | None = None, calls: int = 200) -> list[dict]:
    """Per fused op (fwd+bwd) and impl at the paper's shapes: us per call eager and under graph replay,
    kernels per call. CUDA only: on CPU returns [] (see GRAPH_OPS_NOTE)."""
    import json

    if device != "cuda" or not torch.cuda.is_available():
        return []
    from bicycle import ops

    shapes = paper_op_shapes("cuda")
    dev = "cuda"
    mu = torch.randn(shapes["reparam_kl"], device=dev, requires_grad=True)
    lv = torch.randn(shapes["reparam_kl"], device=dev, requires_grad=True)
    eps = torch.randn(shapes["reparam_kl"], device=dev)
    preds = [torch.randn(s, device=dev, requires_grad=True) for s in shapes["lsgan"]]
    reals = [torch.randn(s, device=dev, requires_grad=True) for s in shapes["lsgan"]]
    impls = ["ref"] + (["triton"] if ops.unavailable_reason("triton", "cuda", "lsgan") is None else [])

    def cases(impl):
        def rk():
            z, kl = ops.reparam_kl(mu, lv, eps, 0.01, impl=impl)
            return torch.autograd.grad((z.sum() + kl), (mu, lv))
        yield "reparam_kl", shapes["reparam_kl"], rk
        yield "lsgan", shapes["lsgan"], lambda: torch.autograd.grad(ops.lsgan(preds, 1.0, impl=impl), preds)
        yield "lsgan_d", shapes["lsgan"] * 2, lambda: torch.autograd.grad(ops.lsgan_d(preds, reals, impl=impl), preds + reals)

    records = []
    for impl in impls:
        for op, shape, fn in cases(impl):
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            eager_us = (time.perf_counter() - t0) / calls * 1e6
            kernels, kernel_ms = _profile_kernels(fn, 20)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(10):
                    fn()
            graph.replay()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls // 10):
                graph.replay()
            torch.cuda.synchronize()
            graph_us = (time.perf_counter() - t0) / calls * 1e6
            records.append({"op": op, "pass": "fwd_bwd", "impl": impl, "shape": shape, "us_per_call_eager": eager_us,
                            "us_per_call_graph": graph_us, "kernels_per_call": kernels,
                            "kernel_us_per_call": kernel_ms * 1e3 if kernel_ms else None,
                            "device": "cuda", "device_name": torch.cuda.get_device_name(), "torch": torch.__version__})
            del graph
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"records": records}, indent=1) + "\n")
    return records


# -- batch preparation: effect on CPU training steps/s at 64 px -----------------------------------

def _write_aligned_folder(root: Path, count: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder = root / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        arr = rng.integers(0, 256, (size, 2 * size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.png")
    return root


def run_prep_bench(image_size: int = 64, batch_size: int = 4, steps: int = 8, load_size: int | None = None,
                   json_path: str | None = None) -> list[dict]:
    """CPU training steps/s with the aligned dataset's batch preparation via ``prepare_batch``
    impl=cpp vs impl=ref, round-robin in one run (same model, same step; 64 px, widths 16)."""
    import json

    from bicycle import ops
    from bicycle.data.aligned import AlignedDataset
    from bicycle.models import MODELS, Objective, draw_noise
    from bicycle.train.step import TrainState, train_step

    impls = ["ref"] + (["cpp"] if ops.unavailable_reason("cpp", "cpu", "prepare_batch") is None else [])
    load = load_size or image_size + image_size // 8
    cfg = step_config("cpu", batch_size, quick=False)
    from bicycle.config import replace
    cfg = replace(cfg, {"net.image_size": image_size})
    cfg, nets, opts = _build(cfg, "cpu", capturable=False)
    state = TrainState(nets, opts, MODELS["bicycle"], Objective(cfg.loss, cfg.net.gan_mode, "auto"))
    times: dict[str, dict[str, list[float]]] = {i: {"prep": [], "step": []} for i in impls}
    with tempfile.TemporaryDirectory() as tmp:
        root = _write_aligned_folder(Path(tmp), 4 * batch_size, load)
        datasets = {i: AlignedDataset(root, "train", image_size, flip=True, load_size=load, progress=False, impl=i)
                    for i in impls}
        for ds in datasets.values():  # fill the decoded-image caches: time the preparation, not PNG decoding
            ds.get_batch(list(range(len(ds))))
        idx = list(range(batch_size))
        for ds in datasets.values():
            train_step(state, *ds.get_batch(idx), draw_noise(state.model, batch_size, cfg.net.nz, "cpu"))
        for k in range(steps):
            for impl, ds in datasets.items():
                idx = [(k * batch_size + j) % len(ds) for j in range(batch_size)]
                t0 = time.perf_counter()
                a, b = ds.get_batch(idx)
                t1 = time.perf_counter()
                train_step(state, a, b, draw_noise(state.model, batch_size, cfg.net.nz, "cpu"))
                t2 = time.perf_counter()
                times[impl]["prep"].append((t1 - t0) * 1e3)
                times[impl]["step"].append((t2 - t1) * 1e3)
    from bicycle.bench import _cpu_name, git_commit
    records = []
    ref_sps = None
    for impl in impls:
        prep, step = statistics.median(times[impl]["prep"]), statistics.median(times[impl]["step"])
        sps = 1e3 / (prep + step)
        ref_sps = ref_sps or sps
        records.append({"op": "prepare_batch", "impl": impl, "image_size": image_size, "load_size": load,
                        "batch_size": batch_size, "ngf": cfg.net.ngf, "prep_ms": prep, "step_ms": step,
                        "steps_per_s": sps, "prep_fraction": prep / (prep + step), "steps_per_s_vs_ref": sps / ref_sps,
                        "steps": steps, "device": "cpu", "device_name": _cpu_name(), "threads": torch.get_num_threads(),
                        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                        "torch": torch.__version__, "commit": git_commit()})
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"records": records}, indent=1) + "\n")
    return records


def format_prep_table(records: list[dict]) -> str:
    lines = [f"{'impl':<6}{'size':>6}{'batch':>6}{'prep ms':>9}{'step ms':>9}{'steps/s':>9}{'prep %':>8}{'x ref':>7}"]
    for r in records:
        lines.append(f"{r['impl']:<6}{r['image_size']:>6}{r['batch_size']:>6}{r['prep_ms']:>9.2f}{r['step_ms']:>9.1f}"
                     f"{r['steps_per_s']:>9.2f}{100 * r['prep_fraction']:>8.2f}{r['steps_per_s_vs_ref']:>7.3f}")
    return "\n".join(lines)

