#!/usr/bin/env python3
"""The demo page under load: CLIENTS gradio_client clients, each sending REQUESTS ``generate`` calls at once.

    python benchmarks/demo_load.py RUN [--clients 4] [--requests 20] [--outputs 8] [--json PATH]

Serves ``bicycle demo RUN`` in its own process on a free localhost port (as a user runs it), then reports:
requests answered (none may be lost), latency median / p90 / max, and the server's resident memory after the
first request and its peak afterwards (sampled every 50 ms from /proc/PID/status; the bound: peak <=
after-first + 200 MB).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

RSS_BOUND_MB = 200


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--outputs", type=int, default=8)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from gradio_client import Client, handle_file
    from PIL import Image, ImageDraw

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", f"from bicycle.demo import serve; serve({a.run!r}, port={port})"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the demo did not answer on {url}")
            time.sleep(0.2)
    img = Path(f"/tmp/demo_load_{port}.png")
    canvas = Image.new("RGB", (256, 256))
    ImageDraw.Draw(canvas).ellipse((60, 60, 190, 190), outline=(255, 255, 255), width=12)
    canvas.save(img)
    value = {"background": handle_file(str(img)), "layers": [], "composite": handle_file(str(img))}
    Client(url, verbose=False).predict(value, a.outputs, 0, "auto", 1.0, False, api_name="/generate")
    after_first = rss_mb(server.pid)
    peak = [after_first]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(server.pid))
            time.sleep(0.05)

    latencies: list[float] = []
    failures: list[str] = []

    def client(k: int) -> None:
        c = Client(url, verbose=False)
        for i in range(a.requests):
            t0 = time.perf_counter()
            try:
                gallery, *rest = c.predict(value, a.outputs, k * 1000 + i, "auto", 1.0, False, api_name="/generate")
                if len(gallery) != a.outputs:
                    failures.append(f"client {k} request {i}: {len(gallery)} outputs; {rest[-1]}")
            except Exception as e:  # noqa: BLE001 - counted as lost
                failures.append(f"client {k} request {i}: {type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    server.terminate()
    server.wait(timeout=30)
    lat = sorted(latencies)
    result = {"run": a.run, "clients": a.clients, "requests_each": a.requests, "outputs": a.outputs,
              "answered": len(lat) - len(failures), "lost": len(failures), "failures": failures[:5],
              "latency_s": {"median": statistics.median(lat), "p90": lat[int(0.9 * (len(lat) - 1))], "max": lat[-1]},
              "wall_s": wall, "rss_after_first_mb": after_first, "rss_peak_mb": peak[0],
              "rss_bound_met": peak[0] <= after_first + RSS_BOUND_MB, "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not failures and result["rss_bound_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
