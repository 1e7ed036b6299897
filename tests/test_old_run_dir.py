"""A run dir written by 4a024e5 (tests/fixtures/run_4a024e5: 2 steps of a tiny demo model) loads, resumes, samples
and exports."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bicycle.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "run_4a024e5"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_it_loads(old_run):
    import bicycle
    model = bicycle.load(old_run, "cpu")
    assert model.step == 2 and model.config.net.nz == 2


def test_it_resumes(old_run):
    r = invoke("train", "--resume", str(old_run), "--steps", "3", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and (old_run / "checkpoints" / "step_00000003.safetensors").is_file()


def test_it_samples_and_exports(old_run, tmp_path):
    r = invoke("sample", "--checkpoint", str(old_run), "--out", str(tmp_path / "s"), "--samples", "2", "--inputs", "2",
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "grid.png").is_file()
    r = invoke("export", str(old_run), "--out", str(tmp_path / "m.safetensors"))
    assert r.exit_code == 0, r.output
    import bicycle
    assert bicycle.load(tmp_path / "m.safetensors", "cpu").step == 2
