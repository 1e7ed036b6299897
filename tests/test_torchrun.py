"""`bicycle train` under torchrun, as a user launches it: 2 gloo ranks on the CPU, resumed, stopped, restarted."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FLAGS = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--log-every", "10",
         "--sample-every", "1000", "--checkpoint-every", "10", "--impl", "ref", "--device", "cpu"]
STEPS = 40
pytestmark = pytest.mark.slow


def bicycle(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bicycle", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(a: Path, b: Path) -> None:
    x, y = tensors(a), tensors(b)
    assert x.keys() == y.keys()
    assert [k for k in x if not torch.equal(x[k], y[k])] == []


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted 40-step run on 2 ranks (bicycle train --nproc 2)."""
    run = tmp_path_factory.mktemp("torchrun") / "whole"
    r = bicycle("train", "--nproc", "2", *FLAGS, "--steps", STEPS, "--run-dir", run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "batch 4 per rank x 2 ranks (global batch 8)" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert r.stdout.count("bicycle train: preset demo") == 1  # rank 0 speaks for the job
    return run


def test_two_ranks_write_one_run_dir_with_every_ranks_noise_stream(whole):
    final = tensors(whole / "checkpoints" / f"step_{STEPS:08d}.safetensors")
    assert "rng.torch.rank1" in final and not torch.equal(final["rng.torch"], final["rng.torch.rank1"])
    assert sorted(p.name for p in whole.iterdir()) == ["checkpoints", "config.json", "posterior.safetensors", "run.lock", "samples",
                                                           "summary.json", "train.log"]


def test_resume_on_the_same_world_size_continues_exactly(whole, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(whole, run)
    for p in (run / "checkpoints").glob("step_*"):
        if p.name != "step_00000020.safetensors":
            p.unlink()
    (run / "checkpoints" / "latest").write_text("step_00000020.safetensors\n")
    r = bicycle("train", "--nproc", "2", "--resume", run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_same(run / "checkpoints" / f"step_{STEPS:08d}.safetensors", whole / "checkpoints" / f"step_{STEPS:08d}.safetensors")


def test_resume_on_another_world_size_says_what_changes(whole, tmp_path):
    run = tmp_path / "one"
    shutil.copytree(whole, run)
    r = bicycle("train", "--resume", run, "--steps", STEPS + 2, "--log-every", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trained on 2 rank(s) and resumes on 1" in r.stdout


def worker_pids(run_dir: Path) -> dict[int, int]:
    """rank -> pid of the workers training into ``run_dir``."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in (proc / "environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if str(run_dir).encode() in cmd and b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            out[int(env[b"RANK"])] = int(proc.name)
    return out


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_resumes_by_itself(whole, tmp_path):
    run = tmp_path / "elastic"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
           "-m", "bicycle", "train", *FLAGS, "--steps", str(STEPS), "--run-dir", str(run)]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step_00000010.safetensors").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read() if job.poll() is not None else "timeout"
        time.sleep(0.05)
    pids = worker_pids(run)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    out, _ = job.communicate(timeout=240)
    assert job.returncode == 0, out
    assert "torchrun restart 1: resuming" in out and "Traceback" not in out
    assert_same(run / "checkpoints" / f"step_{STEPS:08d}.safetensors", whole / "checkpoints" / f"step_{STEPS:08d}.safetensors")


def test_sigterm_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    run = tmp_path / "stopped"
    job = subprocess.Popen([sys.executable, "-m", "bicycle", "train", "--nproc", "2", *FLAGS, "--steps", "100000",
                            "--run-dir", str(run)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step_00000010.safetensors").exists():
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    pids = worker_pids(run)
    os.kill(pids[1], signal.SIGTERM)  # one rank hears it: every rank stops
    out, _ = job.communicate(timeout=120)
    assert "interrupted at step" in out and "Traceback" not in out, out
    step = int(out.split("interrupted at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:08d}.safetensors").is_file()


def test_a_divergence_stops_every_rank_with_one_verdict(tmp_path):
    r = bicycle("train", "--nproc", "2", *FLAGS, "--steps", "20", "--log-every", "1", "--lr", "1e30",
                "--run-dir", tmp_path / "div")
    assert r.returncode == 6, r.stdout + r.stderr  # TrainingDiverged, decided by both ranks at the same step
    out = r.stdout + r.stderr
    assert out.count("Error: training diverged at step") == 1 and "Traceback" not in out, out  # rank 0 alone
    assert "exited with code 6" in out  # the verdict, not torchrun stopping the other rank (-15)
    assert not list((tmp_path / "div" / "checkpoints").glob("step_*"))
