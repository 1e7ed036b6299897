"""The study scripts (experiments/) end to end at toy budgets. ablation.py: every model trains, is evaluated and
lands in the table, the targets block is computed from the records, and a second call reuses the
records. quality_gpu.py (the 128-px target, meant for a GPU) runs through on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "ablation" / "ablation.py"
GENERALIZATION = ROOT / "experiments" / "generalization"


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
    cmd = [sys.executable, str(ROOT / "experiments" / "quality_gpu" / "quality_gpu.py"), "--device", "cpu", "--steps", "2", "--width", "8",
           "--inputs", "2", "--samples", "2", "--run-dir", str(tmp_path / "run"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["steps_reached"] == 2 and rec["config"]["net.image_size"] == 128 and rec["config"]["net.backbone"] == "unet128"
    assert rec["measures"]["protocol"]["inputs"] == 2 and rec["train_wall_seconds"] > 0
    assert rec["targets"]["valid_rate"]["met"] == (rec["measures"]["valid_rate"] >= 0.9)


def _bench_module(name: str = "attribute_probe"):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, GENERALIZATION / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_attribute_probe_reads_a_code_that_carries_the_label_and_not_one_that_does_not():
    import torch
    knn = _bench_module().knn_accuracy
    g = torch.Generator().manual_seed(0)
    labels, val_labels = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (200,), generator=g)
    centres = torch.randn(4, 8, generator=g) * 5
    code = lambda y: centres[y] + 0.1 * torch.randn(len(y), 8, generator=g)
    assert knn(code(labels), labels, code(val_labels), val_labels) == 1.0
    noise = lambda n: torch.randn(n, 8, generator=g)
    assert knn(noise(400), labels, noise(200), val_labels) < 0.45  # chance 0.25


def test_the_attribute_probe_runs_on_a_trained_variant_run_and_on_its_trajectory(tmp_path):
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "bicycle", "train", "--data", "shapes-outline-big", "--steps", "2",
                            "--checkpoint-every", "1", "--keep-checkpoints", "2", "--run-dir", str(run)],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, str(GENERALIZATION / "attribute_probe.py"), str(run), "--train", "40", "--val", "20",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["step"] == 2 and set(r["attributes"]) == {"fill", "background"}
    for a in r["attributes"].values():
        assert sum(a["decoded_histogram"]) <= 20 and sum(a["truth_histogram"]) == 20
        assert all(0.0 <= a[k] <= 1.0 for k in ("mean_knn", "sampled_knn", "decoded"))
    assert len(r["dimensions"]["sigma_median"]) == 8
    assert "fill" in done.stdout and "background" in done.stdout
    lines = r["fill_lines"]
    present = {str(f) for f, n in enumerate(r["attributes"]["fill"]["truth_histogram"]) if n}
    assert set(lines["drawn"]) == present and lines["from"] in {int(f) for f in present}
    assert all(len(row) == len(lines["t"]) and all(sum(h) <= 20 for h in row) for row in lines["drawn"].values())
    ckpts = sorted((run / "checkpoints").glob("step_*.safetensors"))
    assert len(ckpts) == 2
    both = subprocess.run([sys.executable, str(GENERALIZATION / "attribute_probe.py"), *map(str, ckpts), "--train", "40",
                           "--val", "20", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert both.returncode == 0, both.stderr[-2000:]
    assert [t["step"] for t in json.loads(out.read_text())] == [1, 2]


def test_the_oracle_code_is_one_hot_fill_then_background_and_the_script_trains_each_network(tmp_path):
    import torch

    from bicycle.data.shape_variants import ShapeVariantDataset
    mod = _bench_module("oracle_code")
    ds = ShapeVariantDataset("shapes-unequal", 32, "val", 0, length=20)
    z = mod.oracle_codes(ds, list(range(20)), 8)
    fills = torch.tensor([int(ds.params(i)["fill"]) for i in range(20)])
    bgs = torch.tensor([int(ds.params(i)["background"]) for i in range(20)])
    assert torch.equal(z[:, :4].argmax(1), fills) and torch.equal(z[:, 4:7].argmax(1), bgs)
    assert torch.equal(z.sum(1), torch.full((20,), 2.0)) and not z[:, 7].any()
    out = tmp_path / "oracle.json"
    done = subprocess.run([sys.executable, str(GENERALIZATION / "oracle_code.py"), "--data", "shapes-unequal", "--image-size",
                           "32", "--steps", "2", "--checks", "2", "--set", "optim.lr=0.002", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["net"], r["step"]) for r in results] == [("g", 1), ("g", 2), ("e", 1), ("e", 2)]
    assert all(0.0 <= r["fill"] <= 1.0 and 0.0 <= r["background"] <= 1.0 for r in results)
    assert sum(results[0]["fills_drawn"]) <= 200
    assert all(r["set"] == {"optim.lr": 0.002} and r["lr"] == 0.002 for r in results)
    assert mod.parse_override("net.inject=all") == ("net.inject", "all")
