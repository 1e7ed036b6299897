"""experiments/quality/run.py: the protocol that cannot overfit (check tasks looked at once, a ledger)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("quality_run", ROOT / "experiments" / "quality" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_check_task_is_run_as_a_user_would_recorded_and_then_refused(tmp_path, capsys):
    q = _script()
    paths = ["--out", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--ledger", str(tmp_path / "ledger.json")]
    tiny = ["--", "--steps", "2", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "2", "--checkpoint-every", "2",
            "--sample-every", "100", "--impl", "ref"]
    args = ["--tasks", "10000", "10001", "--jobs", "2", "--image-size", "32", "--label", "tiny", "--inputs", "3",
            "--samples", "2", *paths, *tiny]
    assert q.main(args) == 0
    row = json.loads((tmp_path / "results" / "tiny" / "task_10000.json").read_text())
    assert row["steps"] == 2 and row["train_seconds"] > 0 and row["description"].startswith("procedural:10000: ")
    assert set(row["prior"]) == set(q.MEASURES) and row["posterior"]["valid_rate"] is not None
    ledger = json.loads((tmp_path / "ledger.json").read_text())
    assert sorted(e["seed"] for e in ledger) == [10000, 10001]  # two jobs, neither lost the other's entry
    assert len(ledger[0]["config_hash"]) == 12
    report = json.loads((tmp_path / "results" / "tiny" / "report.json").read_text())
    assert report["check_tasks"] == 2 and report["is_a_result"] is False and len(report["targets"]) == 5
    assert "a result needs >= 6 check tasks" in capsys.readouterr().out
    assert q.main(args) == 2  # looked at once
    assert "were looked at already" in capsys.readouterr().err
    assert json.loads((tmp_path / "ledger.json").read_text()) == ledger


def test_the_diagnosis_gives_continuous_signals_for_a_calibration_run(tmp_path, capsys):
    from click.testing import CliRunner

    from bicycle.cli import main
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", "procedural:3", "--image-size", "32", "--steps", "2", "--ngf", "8",
                                  "--nef", "8", "--ndf", "8", "--batch-size", "2", "--checkpoint-every", "2",
                                  "--sample-every", "100", "--impl", "ref", "--ema", "0.9", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    spec = importlib.util.spec_from_file_location("quality_diagnose", ROOT / "experiments" / "quality" / "diagnose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = module.main([str(run), "--inputs", "4", "--samples", "2", "--weights", "raw"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == row
    assert row["weights"] == "raw" and 0 <= row["valid_rate"] <= 1 and 0 <= row["encoded_same_mode"] <= 1
    assert isinstance(row["texture"], float) and isinstance(row["encoded_texture"], float)


def test_the_photo_signals_foreground_iou_tells_a_filled_outline_from_a_blob_of_its_own(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "quality"))
    spec = importlib.util.spec_from_file_location("quality_photodiv", ROOT / "experiments" / "quality" / "photodiv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    truth = torch.ones(1, 3, 16, 16)
    truth[..., 4:12, 4:12] = -0.5  # a dark object on white
    same, elsewhere, faint = truth.clone(), torch.ones(1, 3, 16, 16), truth.clone()
    elsewhere[..., 0:4, 0:16] = -0.5
    faint[..., 4:12, 4:12] = 1 - 2 * 10 / 255  # 10 levels from white: background
    outs = torch.stack([same, elsewhere, faint], 1)  # [1, 3, 3, 16, 16]
    assert module.foreground_iou(outs[:, :1], truth) == 1.0
    assert module.foreground_iou(outs[:, 1:2], truth) == 0.0
    assert module.foreground_iou(outs[:, 2:], truth) == 0.0


def test_the_sensitivity_changes_one_factor_and_the_oracle_agrees_which_changes_are_valid(tmp_path, capsys):
    from click.testing import CliRunner

    from bicycle.cli import main
    from bicycle.data.procedural import ProceduralDataset

    spec = importlib.util.spec_from_file_location("quality_sensitivity", ROOT / "experiments" / "quality" / "sensitivity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ds = ProceduralDataset(5, 64, "val")  # a silhouette task with noise and shading
    a, variants = module.changes(ds, 6)
    valid = {name: ds.is_valid(a, b).float().mean().item() for name, b in variants.items()}
    assert valid["real"] == valid["other fill"] == valid["other background"] == 1.0
    assert valid["blend of two fills"] == valid["fill +24 levels"] == valid["fill +48 levels"] == 0.0
    modes, n_bg = ds.mode_of(a, variants["real"]), len(ds.backgrounds)
    assert ((ds.mode_of(a, variants["other fill"]) // n_bg) == (modes // n_bg + 1) % len(ds.fills)).all()
    assert ((ds.mode_of(a, variants["other background"]) % n_bg) == (modes % n_bg + 1) % n_bg).all()

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", "procedural:5", "--image-size", "32", "--steps", "2", "--ngf", "8",
                                  "--nef", "8", "--ndf", "8", "--batch-size", "2", "--checkpoint-every", "2",
                                  "--sample-every", "100", "--impl", "ref", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    row = module.main([str(run), "--inputs", "4"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == row
    assert row["step"] == 2 and row["real"]["e_shift"] == 0.0 and row["other background"]["e_shift"] > 0
    assert all(r["d"] >= 0 and r["d2"] >= 0 for name, r in row.items() if isinstance(r, dict))
