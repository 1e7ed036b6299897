"""One writer per run dir, in real processes: two trainers started on one dir at once, a ``--resume`` while the
run trains, a ``kill -9`` that leaves no stale lock, and a reader (``bicycle.load``) while training prunes the
checkpoint it chose. Each case takes a few seconds (32 px, widths 8, one thread)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import bicycle
from bicycle import io
from bicycle.errors import RunDirBusy
from fault_helpers import ForkServer, alive, single_thread_env

BUSY = RunDirBusy.exit_code
TRAIN = ["train", "--device", "cpu", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8",
         "--batch-size", "2", "--log-every", "1", "--sample-every", "100000", "--impl", "ref"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"),
                                reason="needs fork and /proc (Linux)")


@pytest.fixture(scope="module")
def server():
    s = ForkServer(single_thread_env())
    s.ready()
    yield s
    s.close()


def _last(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def _wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("waited too long")
        time.sleep(0.01)


def _stop(server: ForkServer, pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    server.wait(pid)


def test_two_trainers_started_on_one_run_dir_one_is_refused_naming_the_other(server, tmp_path):
    run = tmp_path / "RUN"
    args = [*TRAIN, "--steps", "12", "--checkpoint-every", "1", "--run-dir", str(run)]
    pids = [server.spawn(args, tmp_path / f"t{i}.log", tmp_path) for i in range(2)]
    codes = [server.wait(p, timeout=120) for p in pids]
    assert sorted(codes) == [0, BUSY], (codes, [_last(tmp_path / f"t{i}.log") for i in range(2)])
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    log = (tmp_path / f"t{loser}.log").read_text()
    assert "Traceback" not in log, log
    assert _last(tmp_path / f"t{loser}.log").startswith("Error: "), log
    assert f"run dir {run} is in use: pid {pids[winner]}" in log, log
    assert io.load_checkpoint(run).step == 12
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        f"step_{s:08d}.safetensors" for s in (10, 11, 12)]


def test_resume_while_the_run_trains_is_refused_and_kill_9_leaves_no_stale_lock(server, tmp_path):
    run = tmp_path / "RUN"
    pid = server.spawn([*TRAIN, "--steps", "100000", "--checkpoint-every", "2", "--run-dir", str(run)],
                       tmp_path / "a.log", tmp_path)
    try:
        _wait_for(lambda: (run / "checkpoints" / "latest").exists() or not alive(pid))
        assert alive(pid), _last(tmp_path / "a.log")
        for name, args in (("resume", ["train", "--resume", str(run), "--steps", "100000"]),
                           ("fresh", [*TRAIN, "--steps", "3", "--run-dir", str(run)])):
            other = server.spawn(args, tmp_path / f"{name}.log", tmp_path)
            code = server.wait(other, timeout=60)
            log = (tmp_path / f"{name}.log").read_text()
            assert code == BUSY, (name, code, log[-2000:])
            assert "Traceback" not in log and _last(tmp_path / f"{name}.log").startswith("Error: "), log
            assert f"pid {pid}" in log, log
    finally:
        _stop(server, pid)
    step = io.load_checkpoint(run).step  # killed: the kernel released the lock, a resume may take it
    again = server.spawn(["train", "--resume", str(run), "--steps", str(step + 1)], tmp_path / "again.log", tmp_path)
    assert server.wait(again, timeout=120) == 0, (tmp_path / "again.log").read_text()[-2000:]
    assert io.load_checkpoint(run).step == step + 1


def test_a_reader_during_pruning_always_gets_a_checkpoint(server, tmp_path):
    run = tmp_path / "RUN"
    pid = server.spawn([*TRAIN, "--steps", "150", "--checkpoint-every", "1", "--keep-checkpoints", "1",
                        "--run-dir", str(run)], tmp_path / "a.log", tmp_path)
    reads, failures = 0, []
    try:
        _wait_for(lambda: (run / "checkpoints" / "latest").exists() or not alive(pid))
        while alive(pid) and reads < 400:
            try:
                bicycle.load(run, device="cpu")
            except Exception as exc:  # noqa: BLE001 - counted and shown
                failures.append(f"{type(exc).__name__}: {exc}")
            reads += 1
    finally:
        _stop(server, pid)
    assert reads >= 20, (reads, _last(tmp_path / "a.log"))
    assert not failures, f"{len(failures)} of {reads} reads failed: {failures[:3]}"
