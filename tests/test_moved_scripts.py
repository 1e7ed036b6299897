"""The study scripts (experiments/<study>/) and the fixture and parity tools (tools/) run from where they live:
each one's ``--help`` exits 0 when started from another directory, and a tiny part of each runs in seconds.
The longer end-to-end runs of ablation.py, quality_gpu.py, attribute_probe.py and oracle_code.py are in
tests/test_benchmark_scripts.py."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = {
    "ablation": "experiments/ablation/ablation.py",
    "generalization": "experiments/generalization/generalization.py",
    "attribute_probe": "experiments/generalization/attribute_probe.py",
    "oracle_code": "experiments/generalization/oracle_code.py",
    "temperature_sweep": "experiments/temperature_sweep/temperature_sweep.py",
    "quality_gpu": "experiments/quality_gpu/quality_gpu.py",
    "original_fixtures": "tools/original_fixtures.py",
    "perceptual_parity": "tools/perceptual_parity.py",
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"moved_{name}", ROOT / SCRIPTS[name])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_script_runs_from_its_new_place(name, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / SCRIPTS[name]), "--help"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_the_study_scripts_write_beside_themselves_by_default():
    for name in ("generalization", "temperature_sweep"):
        text = (ROOT / SCRIPTS[name]).read_text()
        assert 'Path(__file__).resolve().parent / "results"' in text and "benchmarks/results" not in text
    assert _module("ablation").HERE == ROOT / "experiments" / "ablation"


def test_ablation_picture_stacks_one_block_per_model():
    from PIL import Image
    mod = _module("ablation")
    assert mod.run_dir_of(Path("out"), "bicycle", 1) == Path("out") / "runs" / "bicycle-s1"
    img = mod.picture([("pix2pix", Image.new("RGB", (40, 20))), ("bicycle", Image.new("RGB", (40, 20)))])
    assert img.width >= 40 and img.height > 40


def test_generalization_medians_per_source():
    mod = _module("generalization")
    rec = lambda t, v: {"train_seconds": t, **{s: {k: v for k in mod.MEASURES} for s in ("prior", "posterior")}}
    m = mod.medians([rec(10, 0.2), rec(30, 0.4), rec(20, 0.9)])
    assert m["train_seconds"] == 20 and m["prior"]["valid_rate"] == 0.4 and m["posterior"]["mode_jsd"] == 0.4


def test_attribute_probe_and_oracle_code_pure_parts():
    import torch
    knn = _module("attribute_probe").knn_accuracy
    labels = torch.tensor([0, 1] * 10)
    codes = torch.nn.functional.one_hot(labels, 4).float()
    assert knn(codes, labels, codes[:6], labels[:6]) == 1.0
    assert _module("oracle_code").parse_override("optim.lr=0.002") == ("optim.lr", 0.002)


def test_temperature_sweep_draws_the_curve(tmp_path):
    mod = _module("temperature_sweep")
    median = {s: [{"temperature": t, "valid_rate": 1 - t / 2, "modes_per_input": 2 * t, "mode_jsd": 0.1}
                  for t in mod.TEMPERATURES] for s in mod.SOURCES}
    result = {"runs": ["r"], "protocol": {"inputs": 2, "samples": 2}, "ideal_modes_per_input": 3.0, "median": median}
    mod.draw(result, tmp_path / "sweep.png", size=(200, 150))
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_original_fixtures_refuses_a_folder_that_is_not_the_original(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / SCRIPTS["original_fixtures"]), "--original", str(tmp_path),
                           "--out", str(tmp_path / "out")], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "must be a checkout of github.com/junyanz/BicycleGAN" in done.stderr
    import torch
    img = _module("original_fixtures").image_u8(3, 16, torch.Generator().manual_seed(0))
    assert img.shape == (1, 3, 16, 16) and img.dtype == torch.uint8


def test_perceptual_parity_helpers_and_its_download_guard(tmp_path):
    # In a subprocess: importing the tool replaces torch.hub's downloader for the whole process.
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('pp', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "a = m.images(0, 2, 3, 8); assert a.shape == (2, 3, 8, 8) and m.maxabs(a, a) == 0.0\n"
            "import torch\ntry:\n    torch.hub.load_state_dict_from_url('https://example.invalid/x.pth')\n"
            "except RuntimeError as e:\n    print('refused:', e)")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / SCRIPTS["perceptual_parity"])], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: perceptual_parity: a download was attempted" in done.stdout


def test_the_wheel_packages_neither_tools_nor_experiments():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["scikit-build"]["wheel"]["packages"]
    assert set(packages.values()) == {"bicycle", "kernels"}
    assert not any(str(v).split("/")[0] in ("tools", "experiments", "benchmarks") for v in packages.values())


def test_benchmarks_keeps_only_performance_scripts_and_the_gpu_harness():
    kept = {p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    assert kept == {"data_check.py", "ddp_cpu.py", "demo_load.py", "gpu_check.py", "gpu_check.sh", "gpu_prepare.sh",
                    "soak.py", "test_ops_cpu_bench.py"}
    for rel in SCRIPTS.values():
        study = (ROOT / rel).parent
        if study.parent.name == "experiments":
            assert (study / "README.md").is_file(), f"{study} has no README.md"
    json.loads((ROOT / "tools" / "results" / "perceptual_parity_20261201.json").read_text())
