"""The realism/diversity curve: `bicycle eval` (M inputs, N samples) at a few temperatures t for both z sources
(prior N(0, t^2 I); posterior: the mixture's covariances x t^2), for one or more trained runs, drawn as valid
rate against distinct modes per input.

    python experiments/temperature_sweep/temperature_sweep.py RUN [RUN ...] --out experiments/temperature_sweep/results

Writes ``OUT/sweep.json`` (every run's measures and the median over runs per source and t) and
``OUT/sweep.png`` (the medians; one line per source, each point labelled with its t; the ideal number of
modes as a dashed line).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from PIL import Image, ImageDraw

from bicycle.bench.common import git_commit

TEMPERATURES = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
SOURCES = ("prior", "posterior")
KEYS = ("valid_rate", "modes_per_input", "ideal_modes_per_input", "mode_jsd", "encoded_mode_rate")
COLOURS = {"prior": (31, 119, 180), "posterior": (230, 120, 20)}


def sweep(runs: list[Path], temperatures: tuple[float, ...], inputs: int, samples: int) -> dict:
    from bicycle.inference.evaluate import run_eval

    records = []
    for run in runs:
        for source in SOURCES:
            for t in temperatures:
                r = run_eval(str(run), None, inputs, samples, 0, None, "cpu", echo=lambda _: None, z_source=source,
                             temperature=t)
                records.append({"run": str(run), "z_source": source, "temperature": t, **{k: r.get(k) for k in KEYS}})
                print(f"{run.name} {source} t={t}: valid {r['valid_rate']:.3f}, modes {r['modes_per_input']:.2f}",
                      flush=True)
    median = {s: [{"temperature": t, **{k: statistics.median(x[k] for x in records
                                                               if x["z_source"] == s and x["temperature"] == t)
                                        for k in ("valid_rate", "modes_per_input", "mode_jsd")}}
                  for t in temperatures] for s in SOURCES}
    ideal = statistics.median(x["ideal_modes_per_input"] for x in records)
    return {"runs": [str(r) for r in runs], "protocol": {"inputs": inputs, "samples": samples, "seed": 0},
            "commit": git_commit(), "temperatures": list(temperatures), "ideal_modes_per_input": ideal,
            "records": records, "median": median}


def draw(result: dict, path: Path, size: tuple[int, int] = (720, 480)) -> None:
    w, h = size
    left, right, top, bottom = 70, 30, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ideal = result["ideal_modes_per_input"]
    x_max = max(ideal, *(p["modes_per_input"] for s in SOURCES for p in result["median"][s])) * 1.05

    def xy(modes: float, valid: float) -> tuple[float, float]:
        return left + modes / x_max * (w - left - right), h - bottom - valid * (h - top - bottom)

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(0, v)
        d.line([left - 4, y, left, y], fill="black")
        d.text((left - 36, y - 6), f"{v:.2f}", fill="black")
    for m in range(0, int(x_max) + 1):
        x, _ = xy(m, 0)
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 3, h - bottom + 8), str(m), fill="black")
    x_ideal, _ = xy(ideal, 0)
    for y in range(top, h - bottom, 8):
        d.line([x_ideal, y, x_ideal, y + 4], fill=(120, 120, 120))
    d.text((x_ideal + 4, top + 4), f"ideal {ideal:.2f}", fill=(90, 90, 90))
    d.text((left, h - 28), "distinct valid modes per input (of N samples)", fill="black")
    d.text((8, top - 28), f"valid rate  (median of {len(result['runs'])} run(s); M={result['protocol']['inputs']}, "
                          f"N={result['protocol']['samples']}; labels: temperature t)", fill="black")
    for i, source in enumerate(SOURCES):
        pts = [xy(p["modes_per_input"], p["valid_rate"]) for p in result["median"][source]]
        d.line(pts, fill=COLOURS[source], width=2)
        for (x, y), p in zip(pts, result["median"][source]):
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=COLOURS[source])
            d.text((x + 6, y - 12 + 14 * i), f"{p['temperature']:g}", fill=COLOURS[source])
        d.rectangle([w - right - 150, top + 10 + 18 * i, w - right - 138, top + 22 + 18 * i], fill=COLOURS[source])
        d.text((w - right - 132, top + 10 + 18 * i), f"z from the {source}", fill="black")
    img.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--samples", type=int, default=20)
    a = p.parse_args()
    result = sweep(a.runs, tuple(a.temperatures), a.inputs, a.samples)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    draw(result, a.out / "sweep.png")
    print(f"wrote {a.out / 'sweep.json'} and {a.out / 'sweep.png'}")


if __name__ == "__main__":
    main()
