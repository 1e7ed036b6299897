"""Crash faults: ``kill -9`` at seeded random moments (a share of them inside a checkpoint write), then
``--resume`` gives the uninterrupted run's checkpoint bit for bit; disk-full and permission errors at a
checkpoint, a sample grid and the run dir stop ``bicycle train`` with one line and its storage exit code,
the previous checkpoint intact.

The kill trials reproduce from their seed: ``BICYCLE_FAULT_SEED=<base> BICYCLE_FAULT_TRIALS=<i,j>
pytest tests/test_faults.py -k kill`` (a timed kill lands on the same moment, give or take the machine's
jitter; a kill inside a write waits for the same checkpoint's temporary file).
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bicycle import io
from bicycle.cli import main
from bicycle.errors import StorageError
from fault_helpers import ForkServer, alive, chmod_binds, deny_writes_in, single_thread_env

STEPS = 6
FLAGS = ["train", "--device", "cpu", "--steps", str(STEPS), "--image-size", "32", "--ngf", "8", "--nef", "8",
         "--ndf", "8", "--batch-size", "4", "--checkpoint-every", "1", "--log-every", "1", "--sample-every", "1000",
         "--impl", "ref"]
# 24 trials: kill the moment checkpoint k's temporary file appears (6); the moment the tensor writer's own
# temporary appears in it (safetensors 0.8 writes `.tmpXXXXXX` next to its target and renames it; 3);
# the moment `latest` is being rewritten after checkpoint k (3); at a uniformly random time in a run (10), in
# its first tenth (2: before the first checkpoint, where --resume has nothing to resume).
PLAN = ["write"] * 6 + ["serialize"] * 3 + ["latest"] * 3 + ["time"] * 10 + ["early"] * 2
BASE_SEED = int(os.environ.get("BICYCLE_FAULT_SEED", "20261201"))
ONLY = {int(i) for i in os.environ.get("BICYCLE_FAULT_TRIALS", "").split(",") if i.strip()}
CKPT_TMP = ".step_"  # `.step_XXXXXXXX.safetensors.<random>.tmp`: bicycle.io._atomic_replace's temporary
# safetensors' save_file writes its own `.tmpXXXXXX` next to its target: a kill inside it leaves one, which the
# next start must remove like bicycle's own temporaries.
WRITER_TMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")

posix_fork = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/task"),
                                reason="needs fork and /proc (Linux)")


# --- comparing runs -----------------------------------------------------------------------------------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _diff_tensors(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ in name, dtype, shape or any bit."""
    out = [f"{k}: missing" for k in sorted(set(ref) - set(got))] + [f"{k}: extra" for k in sorted(set(got) - set(ref))]
    for k in sorted(set(ref) & set(got)):
        a, b = ref[k], got[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            out.append(f"{k}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        elif not torch.equal(_bits(a), _bits(b)):
            out.append(f"{k}: {int((_bits(a) != _bits(b)).sum())} bytes differ")
    return out


@dataclass
class Comparison:
    tensors: list[str] = field(default_factory=list)  # non-rng differences: a failure
    rng: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # missing checkpoints, final grid, summary

    @property
    def exact(self) -> bool:
        return not (self.tensors or self.rng or self.metadata or self.other)


def compare_runs(ref: Path, got: Path) -> Comparison:
    """Every checkpoint the reference run kept, bit for bit (rng.* and metadata reported apart), its final
    grid byte for byte, and its summary but for the wall time."""
    c = Comparison()
    for f in sorted((ref / "checkpoints").glob("step_*.safetensors")):
        g = got / "checkpoints" / f.name
        if not g.is_file():
            c.other.append(f"{f.name} missing")
            continue
        a, b = io.load_checkpoint(f), io.load_checkpoint(g)
        diff = _diff_tensors(a.tensors, b.tensors)
        c.tensors += [f"{f.name} {d}" for d in diff if not d.startswith("rng.")]
        c.rng += [f"{f.name} {d}" for d in diff if d.startswith("rng.")]
        c.metadata += [f"{f.name} metadata {k}" for k in sorted(set(a.metadata) | set(b.metadata))
                       if a.metadata.get(k) != b.metadata.get(k)]
    if io.resolve_checkpoint_path(got).name != io.resolve_checkpoint_path(ref).name:
        c.other.append(f"newest checkpoint {io.resolve_checkpoint_path(got).name}")
    for name in ("samples/final.png", "samples/final_auto.png"):
        if (ref / name).read_bytes() != ((got / name).read_bytes() if (got / name).is_file() else b""):
            c.other.append(f"{name} differs")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, got))
    for s, d in ((sa, ref), (sb, got)):  # the wall time differs, the grid lies in each run's own dir
        s.pop("seconds", None)
        s["final_grid"] = os.path.relpath(s.get("final_grid", ""), d)
        if isinstance(s.get("auto"), dict):
            s["auto"]["final_grid"] = os.path.relpath(s["auto"]["final_grid"], d)
        if isinstance(s.get("posterior"), dict):
            s["posterior"]["path"] = os.path.relpath(s["posterior"]["path"], d)
    if sa != sb:
        c.other.append(f"summary.json differs: {sa} vs {sb}")
    return c


# --- one kill trial -----------------------------------------------------------------------------------------

@dataclass
class Trial:
    index: int
    kind: str
    seed: int
    target: str = ""
    exit_code: int | None = None  # of the killed process: -9, or 0 when it finished first
    in_write: bool = False  # a checkpoint's temporary file was still there after the kill
    stale: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    latest_lag: bool = False
    resume: str = ""  # what `--resume` did
    rng_exact: bool = True
    metadata_exact: bool = True
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def where(self) -> str:
        return (f"trial {self.index} ({self.kind}, seed {self.seed}, base seed {BASE_SEED}; rerun: BICYCLE_FAULT_SEED="
                f"{BASE_SEED} BICYCLE_FAULT_TRIALS={self.index} pytest tests/test_faults.py -k kill): {self.target}")


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if not ln.startswith("[")]
    except FileNotFoundError:
        return "(no output)"
    return " | ".join(lines[-n:])


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def _kill_when(trial: Trial, pid: int, run: Path, rng: random.Random, duration: float) -> None:
    ckpts = run / "checkpoints"
    start = time.monotonic()
    if trial.kind in ("time", "early"):
        delay = rng.uniform(0.0, (0.95 if trial.kind == "time" else 0.1) * duration)
        trial.target = f"kill -9 {delay:.3f} s after the start"

        def due() -> bool:
            return time.monotonic() - start >= delay
    else:
        k = rng.randint(1, STEPS - 1 if trial.kind == "latest" else STEPS)  # `latest` after the last: see due()
        name = f"step_{k:08d}.safetensors"
        trial.target = {"write": f"kill -9 when .{name}.*.tmp appears",
                        "serialize": f"kill -9 when the tensor writer's .tmp* appears while .{name}.*.tmp is written",
                        "latest": f"kill -9 when checkpoints/.latest.*.tmp appears after {name}"}[trial.kind]

        def due() -> bool:
            # each with a fallback that kills just after the moment aimed at, should a fast disk hide it
            try:
                names = os.listdir(ckpts)
            except FileNotFoundError:
                return False
            if trial.kind == "write":
                return name in names or any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in names)
            if trial.kind == "serialize":  # safetensors 0.8: `.tmpXXXXXX` next to its target
                return name in names or (any(n.startswith(f".{name}.") for n in names) and any(
                    n.startswith(".tmp") and not n.endswith(".tmp") for n in names))
            later = any(n.startswith("step_") and n > name for n in names)
            return later or (name in names and any(n.startswith(".latest.") and n.endswith(".tmp") for n in names))
    polls = 0
    while polls % 16 or alive(pid):  # /proc read on every 16th poll: the polls are what must be cheap
        polls += 1
        if due():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        if trial.kind in ("time", "early"):
            time.sleep(min(0.005, max(0.0, delay - (time.monotonic() - start))))
        else:
            time.sleep(0.0003)


def run_trial(trial: Trial, server: ForkServer, root: Path, ref: Path, duration: float, ref_done) -> Trial:
    t0 = time.monotonic()
    rng = random.Random(trial.seed)
    home = root / f"trial{trial.index:02d}"
    home.mkdir()
    run = home / "RUN"
    pid = server.spawn([*FLAGS, "--run-dir", str(run)], home / "killed.log", home)
    _kill_when(trial, pid, run, rng, duration)
    trial.exit_code = server.wait(pid)
    problems = trial.problems
    if trial.exit_code not in (-signal.SIGKILL, 0):
        problems.append(f"the run to be killed exited {trial.exit_code} by itself: {_tail(home / 'killed.log')}")
        return trial

    # the state a crash left: every checkpoint complete, `latest` naming one of them
    ckpts = run / "checkpoints"
    stale = _hidden(ckpts) + _hidden(run)
    trial.stale = [f"{p.relative_to(run)} ({p.stat().st_size} B)" for p in stale]
    trial.in_write = any(p.name.startswith(CKPT_TMP) and p.name.endswith(".tmp") for p in stale)
    files = sorted(ckpts.glob("step_*.safetensors")) if ckpts.is_dir() else []
    trial.checkpoints = [p.name for p in files]
    for f in files:
        try:
            ck = io.load_checkpoint(f)
            if f.name != f"step_{ck.step:08d}.safetensors":
                problems.append(f"{f.name} holds step {ck.step}")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"corrupt checkpoint after the kill: {f.name}: {exc}")
    latest = ckpts / "latest"
    if latest.is_file():
        named = latest.read_text().strip()
        if named not in trial.checkpoints:
            problems.append(f"`latest` names {named!r}, not one of {trial.checkpoints}")
        trial.latest_lag = bool(files) and named != files[-1].name

    # resume (or, with nothing to resume, find out what --resume says and start afresh)
    newest = io.load_checkpoint(files[-1]).step if files else None
    pid = server.spawn(["train", "--resume", str(run)], home / "resume.log", home)
    code = server.wait(pid)
    resume_log = (home / "resume.log").read_text(errors="replace")
    finish_log = resume_log
    if files:
        trial.resume = f"resumed at step {newest}"
        if code != 0:
            problems.append(f"--resume exited {code}: {_tail(home / 'resume.log')}")
            return trial
    else:
        last = _tail(home / "resume.log", 1)
        trial.resume = f"--resume exit {code}: {last[:110]}"
        if code == 0:
            problems.append(f"--resume of a run dir without a checkpoint exited 0: {_tail(home / 'resume.log')}")
        if "Traceback" in resume_log or not last.startswith("Error:"):
            problems.append(f"--resume without a checkpoint is not one clear line: {_tail(home / 'resume.log')}")
        pid = server.spawn([*FLAGS, "--run-dir", str(run)], home / "fresh.log", home)
        code = server.wait(pid)
        finish_log = (home / "fresh.log").read_text(errors="replace")
        if code != 0:
            problems.append(f"a fresh start in the killed run's dir exited {code}: {_tail(home / 'fresh.log')}")
            return trial

    # no temporary file survives the next start; nothing else hidden is left either
    tmp_stale = [p for p in stale if p.name.endswith(".tmp") or WRITER_TMP.match(p.name)]
    left = [str(p.relative_to(run)) for p in stale if p.exists()]
    if left:
        problems.append(f"left after the next start: {left} (of stale {trial.stale})")
    if tmp_stale and f"removed {len(tmp_stale)} temporary file(s)" not in finish_log:
        problems.append(f"the next start did not say it removed {len(tmp_stale)} temporary file(s)")
    now_hidden = [str(p.relative_to(run)) for p in _hidden(ckpts) + _hidden(run)]
    if now_hidden:
        problems.append(f"hidden files in the finished run dir: {now_hidden}")

    ref_done.result(timeout=300)  # the reference has finished
    c = compare_runs(ref, run)
    trial.rng_exact, trial.metadata_exact = not c.rng, not c.metadata
    problems += [f"not bit-exact: {d}" for d in c.tensors[:8]] + c.other + c.rng[:4] + c.metadata[:4]
    trial.seconds = time.monotonic() - t0
    return trial


@posix_fork
def test_kill_9_at_random_moments_then_resume_is_bit_exact(tmp_path):
    """Each trial: a fresh `bicycle train` process SIGKILLed at a seeded moment, then `--resume` (or, with no
    checkpoint yet, a fresh start) to the end; the result must equal one uninterrupted run bit for bit."""
    t_start = time.monotonic()
    env = single_thread_env()
    server = ForkServer(env)
    # the reference: a plain `python -m bicycle.cli` process, as a user starts it (trials wait for it)
    plain = tmp_path / "reference"
    with open(tmp_path / "reference.log", "wb") as log:
        ref_proc = subprocess.Popen([sys.executable, "-m", "bicycle.cli", *FLAGS, "--run-dir", str(plain)],
                                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # the same run forked from the server: times an uninterrupted run (the span timed kills draw from) and,
        # compared with the plain one, shows a forked child computes what a fresh process does
        server.ready()
        forked = tmp_path / "reference-forked"
        t0 = time.monotonic()
        pid = server.spawn([*FLAGS, "--run-dir", str(forked)], tmp_path / "reference-forked.log", tmp_path)
        assert server.wait(pid) == 0, _tail(tmp_path / "reference-forked.log")
        duration = time.monotonic() - t0
        print(f"\nfork server and the forked reference ready after {time.monotonic() - t_start:.1f} s")
        def reference() -> Comparison:
            assert ref_proc.wait(timeout=300) == 0, _tail(tmp_path / "reference.log")
            return compare_runs(plain, forked)

        with ThreadPoolExecutor(max_workers=1) as waiter, ThreadPoolExecutor(max_workers=2) as pool:
            same = waiter.submit(reference)
            plan = random.Random(BASE_SEED).sample(PLAN, len(PLAN))  # the kinds interleaved, from the base seed
            trials = [Trial(i, kind, BASE_SEED * 1000 + i) for i, kind in enumerate(plan) if not ONLY or i in ONLY]

            def work(trial: Trial) -> Trial:
                try:
                    return run_trial(trial, server, tmp_path, plain, duration, same)
                except Exception as exc:  # noqa: BLE001 - reported with the trial's seed
                    trial.problems.append(f"{type(exc).__name__}: {exc}")
                    return trial

            done = list(pool.map(work, trials))
        assert same.result().exact, f"a forked child differs from a fresh process: {same.result()}"
    finally:
        server.close()
        if ref_proc.poll() is None:
            ref_proc.kill()
            ref_proc.wait()

    rows = [f"{t.index:2d} {t.kind:6s} exit {t.exit_code!s:>3} in_write={int(t.in_write)} lag={int(t.latest_lag)} "
            f"ckpts={[c[5:13].lstrip('0') or '0' for c in t.checkpoints]} stale={t.stale} {t.resume} "
            f"rng_exact={int(t.rng_exact)} {t.seconds:.1f}s | {t.target}" for t in done]
    print(f"\n{len(done)} kill trials in {time.monotonic() - t_start:.1f} s (uninterrupted run {duration:.2f} s, "
          f"base seed {BASE_SEED}):\n" + "\n".join(rows))
    killed = [t for t in done if t.exit_code == -signal.SIGKILL]
    in_write = [t for t in killed if t.in_write]
    print(f"killed {len(killed)}, inside a checkpoint write {len(in_write)}, before any checkpoint "
          f"{sum(not t.checkpoints for t in killed)}, `latest` one behind {sum(t.latest_lag for t in killed)}, "
          f"rng.* bit-exact {sum(t.rng_exact for t in done)}/{len(done)}, metadata equal "
          f"{sum(t.metadata_exact for t in done)}/{len(done)}")
    failed = [f"{t.where()}: " + "; ".join(t.problems) for t in done if t.problems]
    assert not failed, f"{len(failed)} of {len(done)} trials failed:\n" + "\n".join(failed)
    if not ONLY:
        table = "\n".join(rows)
        assert len(killed) >= 20, f"only {len(killed)} of {len(done)} runs were killed before they finished:\n{table}"
        assert len(in_write) >= 5, f"only {len(in_write)} kills landed inside a checkpoint write:\n{table}"
        assert any(not t.checkpoints for t in killed), "no kill landed before the first checkpoint"


# --- storage errors in process ------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread in process too: tiny nets gain nothing from two, and two spin badly on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SHORT = ["train", "--device", "cpu", "--steps", "3", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8",
         "--batch-size", "4", "--checkpoint-every", "1", "--log-every", "1", "--impl", "ref"]
ENOSPC = "No space left on device"


def _train(args: list[str]):
    r = CliRunner().invoke(main, args)
    return r, r.output.strip().splitlines()[-1] if r.output.strip() else ""


def _assert_one_storage_line(r, last: str) -> None:
    assert r.exit_code == StorageError.exit_code, (r.exit_code, repr(r.exception), r.output[-2000:])
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output, r.output
    assert last.startswith("Error: "), last


def _no_temporaries(run: Path) -> None:
    left = [str(p.relative_to(run)) for p in run.rglob(".*")]
    assert not left, f"left behind: {left}"


def _assert_intact(run: Path, step: int) -> None:
    ckpts = run / "checkpoints"
    name = f"step_{step:08d}.safetensors"
    assert io.load_checkpoint(run).step == step
    assert (ckpts / "latest").read_text().strip() == name
    assert sorted(p.name for p in ckpts.glob("step_*.safetensors"))[-1] == name
    for f in ckpts.glob("step_*.safetensors"):
        io.load_checkpoint(f)


@pytest.mark.parametrize("where", ["save_file", "save_file-named", "fsync"])
def test_disk_full_at_a_checkpoint_is_one_line_and_the_previous_checkpoint_stays(tmp_path, where):
    """ENOSPC at the 2nd checkpoint (of 3 steps): from the tensor writer (with or without the temporary's name,
    after half a file) or from the fsync that follows it; then, the disk freed, --resume finishes the run."""
    run = tmp_path / "run"
    real_save = io.save_file
    calls: list[str] = []
    armed = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) != 2:
            return real_save(tensors, filename, metadata=metadata)
        if where == "fsync":
            real_save(tensors, filename, metadata=metadata)
            armed.append(filename)
            return None
        Path(filename).write_bytes(b"\0" * 4096)  # the disk filled up half way through
        raise OSError(errno.ENOSPC, ENOSPC, *([filename] if where == "save_file-named" else []))

    real_fsync = os.fsync

    def fsync(fd):
        if armed:
            armed.clear()
            raise OSError(errno.ENOSPC, ENOSPC)
        return real_fsync(fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "save_file", save_file)
        mp.setattr(os, "fsync", fsync)
        r, last = _train([*SHORT, "--sample-every", "1000", "--run-dir", str(run)])
    _assert_one_storage_line(r, last)
    target = run / "checkpoints" / "step_00000002.safetensors"
    assert f"cannot write {target}: {ENOSPC}" in last, last
    assert ".tmp" not in last, last
    assert str(run / "checkpoints" / "step_00000001.safetensors") in last and "intact" in last, last
    _assert_intact(run, 1)
    _no_temporaries(run)
    assert not target.exists()
    if where == "save_file":  # the disk freed, the run goes on from the intact checkpoint
        r, last = _train(["train", "--resume", str(run)])
        assert r.exit_code == 0, r.output[-2000:]
        assert io.load_checkpoint(run).step == 3
        _no_temporaries(run)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_real_failed_write_inside_the_tensor_writer_is_a_storage_error(tmp_path):
    """The kernel refuses the 2nd checkpoint's bytes (RLIMIT_FSIZE: EFBIG, the nearest thing to a full disk
    that needs no mount): safetensors' own error must become the same one storage line."""
    import resource

    run = tmp_path / "run"
    real_save = io.save_file
    calls: list[str] = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) != 2:
            return real_save(tensors, filename, metadata=metadata)
        old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, old_limit[1]))
        try:
            return real_save(tensors, filename, metadata=metadata)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "save_file", save_file)
        r, last = _train([*SHORT, "--sample-every", "1000", "--run-dir", str(run)])
    _assert_intact(run, 1)  # this much holds today
    _no_temporaries(run)
    _assert_one_storage_line(r, last)
    assert f"cannot write {run / 'checkpoints' / 'step_00000002.safetensors'}" in last, last
    assert str(run / "checkpoints" / "step_00000001.safetensors") in last and "intact" in last, last


def _read_only(folder: Path, monkeypatch) -> None:
    """chmod 0o500 where it binds; where it does not (root), the same EACCES from the file functions."""
    if chmod_binds(folder.parent):
        folder.chmod(0o500)
    else:
        deny_writes_in(monkeypatch, folder)


def _sample_grid_denied(tmp_path: Path) -> tuple[Path, str]:
    """EACCES on the grid of step 2 (of 3, a checkpoint each step); the stop's last line."""
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            _read_only(run / "samples", mp)
            r, last = _train([*SHORT, "--sample-every", "2", "--run-dir", str(run)])
    finally:
        (run / "samples").chmod(0o700)
    _assert_one_storage_line(r, last)
    return run, last


def test_permission_denied_on_a_sample_grid_is_one_line_and_checkpoints_stay(tmp_path):
    run, last = _sample_grid_denied(tmp_path)
    grid = run / "samples" / "step_00000002.png"
    assert f"cannot write {grid}: Permission denied" in last, last
    _assert_intact(run, 1)  # the grid of step 2 comes before its checkpoint
    _no_temporaries(run)
    assert not grid.exists()


def test_a_failed_sample_grid_says_which_checkpoint_is_intact(tmp_path):
    run, last = _sample_grid_denied(tmp_path)
    assert str(run / "checkpoints" / "step_00000001.safetensors") in last and "intact" in last, last


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_a_read_only_run_dir_is_one_line_at_the_start(tmp_path, resume):
    run = tmp_path / "run"
    if resume:
        r, _ = _train([*SHORT, "--steps", "1", "--sample-every", "1000", "--run-dir", str(run)])
        assert r.exit_code == 0, r.output[-2000:]
        before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
        args = ["train", "--resume", str(run), "--steps", "2"]
    else:
        run.mkdir()
        args = [*SHORT, "--sample-every", "1000", "--run-dir", str(run)]
    try:
        with pytest.MonkeyPatch.context() as mp:
            _read_only(run, mp)
            r, last = _train(args)
    finally:
        run.chmod(0o700)
    _assert_one_storage_line(r, last)
    assert str(run) in last and "Permission denied" in last, last
    _no_temporaries(run)
    if resume:
        assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
        _assert_intact(run, 1)
    else:
        assert not (run / "checkpoints").exists()


def test_the_tensor_writers_own_temporary_is_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    r, _ = _train([*SHORT, "--steps", "1", "--sample-every", "1000", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output[-2000:]
    # what a kill -9 inside save_file leaves (the kill trials of kind "serialize" make them for real)
    leftover = run / "checkpoints" / ".tmpAb12Cd"
    leftover.write_bytes(b"\0" * (64 << 10))
    r, _ = _train(["train", "--resume", str(run), "--steps", "2"])
    assert r.exit_code == 0, r.output[-2000:]
    assert not leftover.exists(), "safetensors' temporary survived the next start"


def test_a_start_that_fails_before_its_first_checkpoint_leaves_no_run_dir(tmp_path):
    """ENOSPC at the first checkpoint of a new run dir: one storage line, and no empty run dir left behind."""
    run = tmp_path / "runs" / "new"

    def save_file(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, ENOSPC, filename)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "save_file", save_file)
        r, last = _train([*SHORT, "--steps", "1", "--sample-every", "1000", "--run-dir", str(run)])
    _assert_one_storage_line(r, last)
    assert not (tmp_path / "runs").exists(), sorted(str(p) for p in tmp_path.rglob("*"))


# --- inference outputs: disk full, no room ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    r, _ = _train([*SHORT, "--steps", "1", "--sample-every", "1000", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output[-2000:]
    return run


def test_disk_full_during_sample_is_one_line_and_leaves_no_partial_outputs(tiny_run, tmp_path):
    from PIL import Image
    out = tmp_path / "out"
    real_save = Image.Image.save
    calls: list[object] = []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            Path(fp).write_bytes(b"\0" * 100)  # the disk filled up half way through the third image
            raise OSError(errno.ENOSPC, ENOSPC)
        return real_save(self, fp, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "save", save)
        r, last = _train(["sample", "--checkpoint", str(tiny_run), "--out", str(out), "--samples", "3", "--inputs", "2",
                          "--device", "cpu"])
    _assert_one_storage_line(r, last)
    assert f"cannot write {out}: {ENOSPC}" in last, last
    assert len(calls) == 3 and not out.exists(), sorted(str(p) for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("command", ["sample", "eval", "bench"])
def test_no_room_for_an_output_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch, command):
    import collections
    from bicycle import outputs
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda _p: usage(1 << 30, (1 << 30) - 4096, 4096))
    target = tmp_path / ("out" if command == "sample" else "r.json")
    args = {"sample": ["sample", "--checkpoint", str(tiny_run), "--out", str(target), "--samples", "2", "--inputs", "1",
                       "--device", "cpu"],
            "eval": ["eval", "--checkpoint", str(tiny_run), "--inputs", "2", "--samples", "2", "--json", str(target),
                     "--device", "cpu"],
            "bench": ["bench", "--device", "cpu", "--quick", "--size", "64", "--json", str(target)]}[command]
    r, last = _train(args)
    _assert_one_storage_line(r, last)
    assert str(target) in last and "MiB free" in last, last
    assert not target.exists()
