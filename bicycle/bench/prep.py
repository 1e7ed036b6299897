"""``bicycle bench --prep``: the batch-preparation op (``prepare_batch``, C++ vs reference) and its effect
on CPU training steps/s at 64 px, round-robin in one run."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bicycle.bench.common import machine_meta, write_json
from bicycle.bench.step import step_config, write_aligned_folder

def run_prep_bench(image_size: int = 64, batch_size: int = 4, steps: int = 8, load_size: int | None = None,
                   json_path: str | None = None) -> list[dict]:
    """CPU training steps/s with the aligned dataset's batch preparation via ``prepare_batch``
    impl=cpp vs impl=ref, round-robin in one run (same model, same step; 64 px, widths 16)."""
    from bicycle import ops
    from bicycle.build import resolve
    from bicycle.config import replace
    from bicycle.data.aligned import AlignedDataset
    from bicycle.models import draw_noise
    from bicycle.plugins import get_plugins
    from bicycle.train.state import build_state
    from bicycle.train.step import train_step

    impls = ["ref"] + (["cpp"] if ops.unavailable_reason("cpp", "cpu", "prepare_batch") is None else [])
    load = load_size or image_size + image_size // 8
    cfg = step_config("cpu", batch_size, quick=False)
    registry = get_plugins().registry
    cfg = resolve(replace(cfg, {"net.image_size": image_size}), registry)
    state = build_state(cfg, registry, "cpu")
    times: dict[str, dict[str, list[float]]] = {i: {"prep": [], "step": []} for i in impls}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_aligned_folder(Path(tmp), 4 * batch_size, load)
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
    records = []
    ref_sps = None
    for impl in impls:
        prep, step = statistics.median(times[impl]["prep"]), statistics.median(times[impl]["step"])
        sps = 1e3 / (prep + step)
        ref_sps = ref_sps or sps
        records.append({"op": "prepare_batch", "impl": impl, "image_size": image_size, "load_size": load,
                        "batch_size": batch_size, "ngf": cfg.net.ngf, "prep_ms": prep, "step_ms": step,
                        "steps_per_s": sps, "prep_fraction": prep / (prep + step), "steps_per_s_vs_ref": sps / ref_sps,
                        "steps": steps, **machine_meta("cpu")})
    if json_path:
        write_json(json_path, {"records": records})
    return records


def format_prep_table(records: list[dict]) -> str:
    lines = [f"{'impl':<6}{'size':>6}{'batch':>6}{'prep ms':>9}{'step ms':>9}{'steps/s':>9}{'prep %':>8}{'x ref':>7}"]
    for r in records:
        lines.append(f"{r['impl']:<6}{r['image_size']:>6}{r['batch_size']:>6}{r['prep_ms']:>9.2f}{r['step_ms']:>9.1f}"
                     f"{r['steps_per_s']:>9.2f}{100 * r['prep_fraction']:>8.2f}{r['steps_per_s_vs_ref']:>7.3f}")
    return "\n".join(lines)

