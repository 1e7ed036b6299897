"""Checksummed weights: each tensor's digest is recorded when a checkpoint or an export is written and checked
when it is read; a changed file is refused naming the tensor; a run dir whose newest checkpoint is missing,
truncated or changed falls back to the newest intact one with one warning line; files without digests load."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from bicycle import io
from bicycle.cli import main
from bicycle.errors import CheckpointError
from bicycle.train.loop import train
from tiny import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from bicycle import plugins
    plugins.set_plugins(None)
    path = tmp_path_factory.mktemp("digests") / "run"
    train(tiny_config(), path, echo=lambda _m: None)  # checkpoints at steps 2 and 4
    return path


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _flip_exponent_bit(path: Path, prefix: str = "G.") -> str:
    """Flip the lowest exponent bit of the first float32 value of the first tensor named ``prefix``...: the value
    doubles or halves and stays finite. Returns the tensor's name."""
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = next(k for k in sorted(header) if k.startswith(prefix) and header[k]["dtype"] == "F32")
    at = 8 + n + header[name]["data_offsets"][0]
    data[at + 2] ^= 0x80  # bit 23 of a little-endian float32: the exponent's lowest bit
    path.write_bytes(bytes(data))
    return name


def test_a_flipped_exponent_bit_is_refused_naming_the_tensor(run, tmp_path):
    bad = tmp_path / "c.safetensors"
    shutil.copy(run / "checkpoints" / "step_00000004.safetensors", bad)
    name = _flip_exponent_bit(bad)
    with pytest.raises(CheckpointError, match=rf"{bad}.*changed after it was written: tensor {name} differs"):
        io.load_checkpoint(bad)
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(bad), "--inputs", "2", "--samples", "2"])
    assert r.exit_code == CheckpointError.exit_code and "Traceback" not in r.output and name in r.output, r.output


def _damage(ckpts: Path, how: str) -> Path:
    newest = ckpts / "step_00000004.safetensors"
    if how == "missing":
        newest.unlink()
    elif how == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        _flip_exponent_bit(newest)
    return newest


@pytest.mark.parametrize("how", ["missing", "truncated", "changed"])
def test_latest_naming_a_damaged_checkpoint_falls_back_to_the_newest_intact_one_with_one_warning(run, tmp_path, how):
    dst = _copy(run, tmp_path)
    ckpts = dst / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000004.safetensors"
    newest = _damage(ckpts, how)
    warnings: list[str] = []
    ckpt = io.load_checkpoint(dst, warn=warnings.append)
    assert ckpt.step == 2 and ckpt.path == ckpts / "step_00000002.safetensors"
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith("warning: ") and str(newest) in warnings[0] and how in warnings[0], warnings
    assert "step_00000002.safetensors" in warnings[0], warnings


def test_resume_from_a_run_whose_newest_checkpoint_changed_continues_from_the_intact_one(run, tmp_path):
    dst = _copy(run, tmp_path)
    _damage(dst / "checkpoints", "changed")
    r = CliRunner().invoke(main, ["train", "--resume", str(dst), "--steps", "5"])
    assert r.exit_code == 0, r.output[-3000:]
    assert "Traceback" not in r.output
    assert "resuming" in r.output and "at step 2" in r.output, r.output[-3000:]
    assert r.output.count("changed after it was written") == 1, r.output[-3000:]  # one warning line
    assert io.load_checkpoint(dst).step == 5


def test_files_without_digests_still_load(run, tmp_path):
    src = run / "checkpoints" / "step_00000004.safetensors"
    meta = {k: v for k, v in io.load_checkpoint(src).metadata.items() if k != "digests"}
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(src)), str(old), metadata=meta)
    assert io.load_checkpoint(old).step == 4


def test_exported_weights_record_digests_and_are_checked(run, tmp_path):
    out = tmp_path / "w.safetensors"
    r = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "digests" in io.load_checkpoint(out).metadata
    name = _flip_exponent_bit(out)
    with pytest.raises(CheckpointError, match=f"tensor {name} differs"):
        io.load_checkpoint(out)
