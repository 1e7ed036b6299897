"""After a crash or a signal: stale temporaries cleared, the newest complete checkpoint found even when
``latest`` lags, SIGTERM's own exit code, files that honour the umask."""
from __future__ import annotations

import os
import signal

from click.testing import CliRunner

import bicycle.train.graph as graph
from bicycle import io
from bicycle.cli import main
from bicycle.config import replace
from bicycle.errors import EXIT_TERMINATED
from bicycle.train.loop import train
from tiny import tiny_config


def _quiet(_line: str) -> None:
    pass


def test_stale_temporaries_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(), run, echo=_quiet)
    stale = [run / "checkpoints" / ".step_00000006.safetensors.abc123.tmp", run / ".config.json.x9.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    lines: list[str] = []
    train(replace(io.load_checkpoint(run).config, {"train.steps": 6}), run, resume=True, echo=lines.append)
    assert not any(p.exists() for p in stale)
    assert any("removed 2 temporary file(s)" in line for line in lines)


def test_resume_takes_the_newest_complete_checkpoint_when_latest_lags(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(), run, echo=_quiet)  # checkpoints at 2 and 4, latest -> 4
    (run / "checkpoints" / "latest").write_text("step_00000002.safetensors\n")  # a crash between rename and update
    assert io.resolve_checkpoint_path(run).name == "step_00000004.safetensors"
    assert io.load_checkpoint(run).step == 4


def test_sigterm_stops_between_steps_and_exits_143(tmp_path, monkeypatch):
    real, calls = graph.train_step, []

    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(graph, "train_step", step)
    args = ["train", "--device", "cpu", "--steps", "6", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8",
            "--batch-size", "4", "--impl", "ref", "--run-dir", str(tmp_path / "run")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == EXIT_TERMINATED, r.output
    assert "interrupted at step 2" in r.output and io.load_checkpoint(tmp_path / "run").step == 2


def test_written_files_honour_the_umask(tmp_path):
    io._file_mode.cache_clear()
    old = os.umask(0o027)
    try:
        train(tiny_config(), tmp_path / "run", echo=_quiet)
    finally:
        os.umask(old)
        io._file_mode.cache_clear()
    for p in [tmp_path / "run" / "config.json", io.resolve_checkpoint_path(tmp_path / "run")]:
        assert (p.stat().st_mode & 0o777) == 0o640, (p, oct(p.stat().st_mode))
