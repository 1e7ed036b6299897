"""The benchmark scripts end to end at toy budgets. ablation.py: every model trains, is evaluated and
lands in the table, the targets block is computed from the records, and a second call reuses the
records. quality_gpu.py (the 128-px target, meant for a GPU) runs through on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH / "ablation.py"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--steps", "2", "--inputs", "2", "--samples", "2",
           "--seeds", "0", "--demo-seeds", "0", "1", "--jobs", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_ablation_runs_every_model_and_reuses_records(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert sorted(result["summary"]) == sorted(["pix2pix", "cae-gan", "cvae-gan", "clr-gan", "bicycle"])
    runs = {(r["model"], r["seed"]) for r in result["runs"]}
    assert ("bicycle", 1) in runs and ("pix2pix", 1) not in runs  # demo seeds add bicycle runs only
    assert all(r["steps"] == 2 for r in result["runs"])
    t = result["targets"]
    demo = [r["valid_rate"] for r in result["runs"] if r["model"] == "bicycle"]
    assert t["demo_median_valid_rate"]["value"] == sum(demo) / 2 and t["demo_median_valid_rate"]["met"] == (sum(demo) / 2 >= 0.7)
    slowest = max(r["train_seconds"] for r in result["runs"])
    assert t["max_train_seconds"] == {"value": slowest, "target": "<= 480", "met": slowest <= 480}
    assert "Targets" in (tmp_path / "ablation.md").read_text() and (tmp_path / "ablation.png").stat().st_size > 0
    again = _run(tmp_path)
    assert again.returncode == 0 and "start" not in again.stdout  # nothing retrained


def test_quality_gpu_script_runs_and_reports_unmet_targets_honestly(tmp_path):
    out = tmp_path / "q.json"
    cmd = [sys.executable, str(BENCH / "quality_gpu.py"), "--device", "cpu", "--steps", "2", "--width", "8",
           "--inputs", "2", "--samples", "2", "--run-dir", str(tmp_path / "run"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["steps_reached"] == 2 and rec["config"]["net.image_size"] == 128 and rec["config"]["net.backbone"] == "unet128"
    assert rec["measures"]["protocol"]["inputs"] == 2 and rec["train_wall_seconds"] > 0
    assert rec["targets"]["valid_rate"]["met"] == (rec["measures"]["valid_rate"] >= 0.9)
