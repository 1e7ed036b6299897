"""The start-up data check at dataset scale: 3,000 A|B PNGs of 256x512 written to a temporary folder, the
full check (every file decoded: ``AlignedDataset``'s construction, listing included) timed with no
verdict cache, on one thread and on the default pool, and again with the cache the pool's run left.

    python benchmarks/data_check.py --json benchmarks/results/data_check_cpu_<date>.json [--count 3000]

Targets on the 2-core development machine: under 30 s without the cache, under 2 s with it. The files
are in the OS page cache when the check runs (they were just written): a first check on a cold disk also
pays the reads. The verdict caches live in their own temporary XDG_CACHE_HOME, never the user's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

TARGET_NO_CACHE_S = 30.0
TARGET_CACHED_S = 2.0


def pair(seed: int, size: int) -> np.ndarray:
    """A photo-like A|B pair (smooth gradients, a few flat shapes, mild noise) [size, 2 * size, 3]: PNGs of
    a realistic size and decoding cost, unlike pure noise (incompressible) or flat colour (trivial)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:2 * size].astype(np.float32) / size
    phase = rng.uniform(0, 6.3, size=3)
    img = np.stack([127 + 100 * np.sin(3 * x + 2 * y + p) for p in phase], -1)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 2), rng.uniform(0.05, 0.25)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_folder(folder: Path, count: int, size: int) -> int:
    """``count`` PNGs in ``folder``; returns their total bytes."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> int:
        path = folder / f"{i:05d}.png"
        Image.fromarray(pair(i, size)).save(path)
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return sum(pool.map(one, range(count)))


def timed_check(root: Path, size: int, cache_home: Path, workers: int | None) -> tuple[float, int]:
    """Seconds for the train split's construction (listing + full check) and how many files it decoded."""
    from bicycle.data import images
    from bicycle.data.aligned import AlignedDataset

    os.environ["XDG_CACHE_HOME"] = str(cache_home)
    decoded: list[Path] = []
    real_decode, real_workers = images.decode_check, images.check_workers
    images.decode_check = lambda path: decoded.append(path) or real_decode(path)  # list.append is thread-safe
    if workers is not None:
        images.check_workers = lambda: workers
    try:
        t0 = time.perf_counter()
        ds = AlignedDataset(root, "train", size, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        images.decode_check, images.check_workers = real_decode, real_workers
    assert len(ds) > 0
    return seconds, len(decoded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=Path, help="write the record here")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256, help="height; each file is size x 2*size")
    args = parser.parse_args()

    from bicycle.bench.common import machine_meta, write_json
    from bicycle.data.images import check_workers

    with tempfile.TemporaryDirectory(prefix="bicycle-data-check-") as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "data"
        t0 = time.perf_counter()
        nbytes = write_folder(root / "train", args.count, args.size)
        print(f"wrote {args.count} PNGs ({nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        serial, _ = timed_check(root, args.size, tmp_path / "cache-serial", 1)
        pooled, decoded_cold = timed_check(root, args.size, tmp_path / "cache", None)
        cached, decoded_warm = timed_check(root, args.size, tmp_path / "cache", None)
    record = {
        **machine_meta("cpu"),
        "files": args.count, "file_size": [2 * args.size, args.size], "format": "png", "total_bytes": nbytes,
        "workers": check_workers(),
        "no_cache_1_thread_s": round(serial, 3),
        "no_cache_s": round(pooled, 3),
        "cached_s": round(cached, 3),
        "files_decoded": {"no_cache": decoded_cold, "cached": decoded_warm},
        "ms_per_file_no_cache": round(1e3 * pooled / args.count, 3),
        "targets": {"no_cache_s": {"value": round(pooled, 3), "target": f"< {TARGET_NO_CACHE_S}", "met": pooled < TARGET_NO_CACHE_S},
                    "cached_s": {"value": round(cached, 3), "target": f"< {TARGET_CACHED_S}", "met": cached < TARGET_CACHED_S}},
        "note": "files in the OS page cache (just written); the check is AlignedDataset's construction, listing included",
    }
    write_json(args.json, record)
    print(f"no cache: {serial:.2f} s on 1 thread, {pooled:.2f} s on {check_workers()}; cached: {cached:.3f} s "
          f"-> {args.json}")


if __name__ == "__main__":
    main()
