#!/usr/bin/env python3
"""The GPU check's driver (benchmarks/gpu_check.sh installs the tree, then runs this).

Parts, run in the order given (``--parts`` / PARTS, default all, ordered by value): env, step, kernels,
graph_ops, tests, loop, ddp. Each runs as subprocesses under its own time cap, a share of ``--budget``,
clipped so that the parts after it keep their floors (shares too); a failure, crash or timeout of one part
is recorded and the next one runs.
This process imports only the standard library: the library (torch, CUDA) runs in children
(``--child NAME``), so a crash there never loses a result.

Everything lands in ONE file, OUT/gpu_check.json, rewritten atomically after every part and every
measurement, so a kill at any moment leaves valid JSON that lists every part with its status and
reason; OUT/gpu_check.txt holds the summary table, OUT/nvidia-smi.txt the nvidia-smi output. Scratch
(junit XML, logs, run dirs) stays in a temporary folder outside OUT; log tails go into the JSON.

Statuses: ok; failed (it ran, a test or measurement failed); error (it crashed or wrote no readable
result); timeout (stopped at its cap, what it measured is kept); skipped (not selected, no CUDA, no
budget left); not-run (not reached); running (the driver itself was killed during it: ``finished`` is
false). Exit status 0 only when every selected part is ok.

``--device cpu`` rehearses the device-agnostic parts (step, kernels, loop on small sizes) on a CPU; the
test-only parts ``fake-*`` rehearse the failure paths (tests/test_gpu_check.py); ``--rehearse SCALE`` runs
every selected real part as a child that sleeps its expected GPU seconds times SCALE (no torch, no CUDA):
the budget arithmetic and the report, speed table included, rehearsed on any machine in seconds.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "bicycle-gpu-check/1"
JSON_NAME, TEXT_NAME, SMI_NAME = "gpu_check.json", "gpu_check.txt", "nvidia-smi.txt"
POLL_S = 0.1
END_RESERVE_S = 2.0  # for the last write after the last part
DEFAULT_BUDGET_S = 400.0
MIN_PART_S = 5.0
PROBE_SHARE = 0.1  # of the budget
PER_TEST_TIMEOUT_S = 60
DISPATCH_SHARE = 0.4  # of the tests part's limit: the dispatcher's file, before the -m gpu run
PYTEST_GRACE_S = 15.0  # between SIGINT and SIGKILL: pytest writes its junit report in between
TAIL_LINES, TAIL_CHARS = 25, 4000
MAX_FAILURES = 30  # failure texts kept in the report
STEP_BATCHES = {"cuda": [2, 8, 32], "cpu": [2]}
KERNEL_SIZES = {"cuda": [1 << 20, 1 << 24, 1 << 26], "cpu": [1 << 16]}
LOOP_SIZES = {"cuda": {"steps": 20, "image_size": 64, "width": 16, "batch_size": 4},
              "cpu": {"steps": 4, "image_size": 32, "width": 8, "batch_size": 4}}
# The original implementation (junyanz/BicycleGAN) at the paper's configuration, fp32 eager, one H100:
# batch -> ms per iteration (shared/environment.md; measured outside this project's runs).
ORIGINAL_H100_MS = {2: 67.0, 8: 89.4, 32: 92.9}
# (target, batch, key, comparison, threshold): fast-mode records, fp32 decides "met", bf16 is shown beside
STEP_TARGETS = [
    ("fast >= 3x in-run eager, batch 2", 2, "speedup_vs_eager", ">=", 3.0),
    ("fast wall <= 1.15x kernel-time sum, batch 2", 2, "wall_over_kernel_time", "<=", 1.15),
    ("fast faster than eager, batch 32", 32, "speedup_vs_eager", ">", 1.0),
    ("goal: fast >= 300 img/s, batch 2", 2, "img_per_s", ">=", 300.0),
    ("goal: fast >= 1000 img/s, batch 32", 32, "img_per_s", ">=", 1000.0),
    ("fast data_wait_fraction <= 5%, every batch (max)", None, "data_wait_fraction", "<=", 0.05),
]


class Stopped(Exception):
    """The driver got SIGTERM or SIGINT (the wrapper's overall timeout, or a person)."""


def _ignore_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _default_signals() -> None:
    """In a child before exec: SIGINT and SIGTERM act again. A shell's background job (``cmd &``) starts with
    SIGINT ignored, and ignored signals are inherited: pytest would then never see the stop signal."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _on_signal(signum: int, _frame: object) -> None:
    _ignore_signals()  # the final write must not be interrupted again
    raise Stopped(signal.Signals(signum).name)


# -- files -------------------------------------------------------------------------------------------

def _finite(obj: object) -> object:
    """``obj`` with non-finite floats as strings: strict JSON has no NaN or Infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: object) -> None:
    write_atomic(path, json.dumps(_finite(data), indent=1, allow_nan=False) + "\n")


def read_json(path: Path) -> tuple[object, str | None]:
    """(document, None), or (None, why) when the file is missing, truncated or not JSON."""
    try:
        return json.loads(path.read_text(errors="replace")), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"


def tail(path: Path | None, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-chars:]


def last_line(text: str) -> str:
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class FileWatch:
    """Whether a file changed (mtime, size) since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, None

    def changed(self) -> bool:
        try:
            st = self.path.stat()
            now = (st.st_mtime_ns, st.st_size)
        except OSError:
            now = None
        changed, self.seen = now != self.seen, now
        return changed


# -- subprocesses --------------------------------------------------------------------------------------

@dataclass
class Cmd:
    argv: list[str]
    rc: int | None
    seconds: float
    timed_out: bool
    log: Path
    spawn_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def record(self, lines: int = 12) -> dict:
        return {"argv": self.argv, "rc": self.rc, "seconds": round(self.seconds, 1), "timed_out": self.timed_out,
                "tail": self.spawn_error or tail(self.log, lines)}

    def why(self) -> str:
        if self.spawn_error:
            return self.spawn_error
        if self.timed_out:
            return f"stopped at its time limit after {self.seconds:.0f} s"
        return f"exit {self.rc}: {last_line(tail(self.log, 40))}"


def _exited(proc: subprocess.Popen) -> bool:
    """Whether the child exited, without reaping it: its pid, the id of its process group, stays taken."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_until(proc: subprocess.Popen, until: float, on_tick: Callable[[], None] | None) -> bool:
    """Poll until the child exits (True) or ``until`` passes (False), calling ``on_tick`` every POLL_S."""
    while not _exited(proc):
        left = until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(POLL_S, left))
        if on_tick:
            on_tick()
    return True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_cmd(argv: list[str], log: Path, deadline: float, env: dict[str, str], stop_signal: int = signal.SIGTERM,
            grace: float = 5.0, on_tick: Callable[[], None] | None = None) -> Cmd:
    """Run ``argv`` (its own process group, output to ``log``) until it exits or ``deadline``: then
    ``stop_signal`` to the group, SIGKILL ``grace`` seconds later. Leaves no process of the group behind."""
    t0 = time.monotonic()
    grace = min(grace, max(0.0, deadline - t0) / 10)
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_signals)
    except OSError as exc:
        return Cmd(argv, None, 0.0, False, log, f"cannot start {argv[0]}: {exc}")
    timed_out = False
    try:
        if not _wait_until(proc, deadline - grace, on_tick):
            timed_out = True
            _signal_group(proc, stop_signal)
            _wait_until(proc, time.monotonic() + grace, None)
    finally:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    return Cmd(argv, proc.returncode, time.monotonic() - t0, timed_out, log)


# -- the report ----------------------------------------------------------------------------------------

class Report:
    """The one JSON document, and the text summary written beside it."""

    def __init__(self, out: Path, doc: dict, t0: float) -> None:
        self.out, self.doc, self.t0 = out, doc, t0

    def part(self, name: str) -> dict:
        return self.doc["parts"][name]

    def write(self) -> None:
        self.doc["updated"] = utc_now()
        self.doc["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        write_json(self.out / JSON_NAME, self.doc)
        write_atomic(self.out / TEXT_NAME, summary_text(self.doc) + "\n")


@dataclass
class Ctx:
    args: argparse.Namespace
    report: Report
    scratch: Path
    env: dict[str, str]
    t0: float
    probe: dict = field(default_factory=dict)
    deadline: float = 0.0

    @property
    def device(self) -> str:
        return self.args.device

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: list[str], deadline: float | None = None, **kw) -> Cmd:
        end = self.deadline if deadline is None else min(deadline, self.deadline)
        return run_cmd(argv, self.scratch / f"{name}.log", end, self.env, **kw)

    def child(self, kind: str, part_file: Path, *extra: str, name: str | None = None, **kw) -> Cmd:
        argv = [self.args.python, str(Path(__file__).resolve()), "--child", kind, "--device", self.device,
                "--part-file", str(part_file), *extra]
        return self.run(name or kind, argv, **kw)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.0f}s] {msg}", flush=True)


PartFn = Callable[[Ctx, dict], tuple[str, str | None]]


@dataclass(frozen=True)
class Part:
    """``run(ctx, data)`` fills ``data`` and returns (status, reason); ``cap`` (a share of the budget) bounds
    it, ``floor`` (a share too) is kept free for it while earlier parts run; ``expect_s``: the seconds it is
    expected to take on an H100 (what ``--rehearse`` sleeps). ``on_device``: runs on --device; ``cuda_only``:
    CUDA or skip; ``probed``: reads the probe (versions, CUDA)."""

    run: PartFn
    cap: float
    floor: float
    expect_s: float = 0.0
    on_device: bool = True
    cuda_only: bool = False
    probed: bool = True
    shares: bool = True  # False only for the test-only fakes: cap and floor in seconds

    def cap_s(self, budget: float) -> float:
        return self.cap * budget if self.shares else self.cap

    def floor_s(self, budget: float) -> float:
        return self.floor * budget if self.shares else self.floor


# -- part: env -----------------------------------------------------------------------------------------

def install_record(args: argparse.Namespace) -> dict:
    log = Path(args.install_log) if args.install_log else None
    return {"status": args.install, "seconds": args.install_seconds, "log_tail": tail(log, 30)}


def part_env(ctx: Ctx, data: dict) -> tuple[str, str | None]:
    data["versions"] = ctx.probe
    data["install"] = install_record(ctx.args)
    problems = [f"probe: {ctx.probe['error']}"] if "error" in ctx.probe else []
    smi = ctx.run("env-nvidia-smi", ["nvidia-smi"], deadline=time.monotonic() + 20)
    data["nvidia_smi"] = smi.record(lines=30)
    write_atomic(ctx.args.out / SMI_NAME, (smi.spawn_error or tail(smi.log, 400, 40000)) + "\n")
    if not smi.ok and ctx.device == "cuda":
        problems.append(f"nvidia-smi: {smi.why()}")
    env = ctx.run("env-bicycle", [ctx.args.python, "-m", "bicycle.cli", "env"])
    data["bicycle_env"] = env.record(lines=60)
    if not env.ok:
        problems.append(f"bicycle env: {env.why()}")
    if problems:
        return "failed", "; ".join(problems)
    return "ok", f"{ctx.probe.get('device_name') or 'no CUDA device'}; install: {ctx.args.install}"


# -- part: tests ---------------------------------------------------------------------------------------

def pytest_options(probe: dict, parallel: bool) -> tuple[list[str], list[str]]:
    """(pytest options, notes on what was left out)."""
    opts, notes = ["-v", "-p", "no:cacheprovider", "-o", "junit_family=xunit1"], []
    if probe.get("pytest-timeout"):
        opts.append(f"--timeout={PER_TEST_TIMEOUT_S}")
    else:
        notes.append("pytest-timeout is not installed: no per-test timeout")
    if parallel and probe.get("pytest-xdist"):
        opts += ["-n", str(min(8, max(1, (os.cpu_count() or 2) // 2)))]
    elif parallel:
        notes.append("pytest-xdist is not installed: the GPU tests ran in one process")
    return opts, notes


def _float(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def _property_value(text: str | None) -> object:
    try:
        return json.loads(text or "")
    except ValueError:
        return text


def parse_junit(path: Path) -> tuple[list[dict], str | None]:
    """([{test, outcome, seconds, message?, text?, properties?}], None), or ([], why)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        return [], "missing"
    except (OSError, ET.ParseError) as exc:
        return [], f"unreadable: {exc}"
    cases = []
    for tc in root.iter("testcase"):
        case: dict = {"test": f"{tc.get('classname', '')}::{tc.get('name', '')}", "outcome": "passed",
                      "seconds": round(_float(tc.get("time")), 3)}
        for tag, outcome in (("skipped", "skipped"), ("error", "error"), ("failure", "failed")):
            el = tc.find(tag)
            if el is not None:
                case["outcome"] = outcome
                case["message"] = (el.get("message") or "")[:300]
                if outcome != "skipped":
                    case["text"] = (el.text or "")[-1500:]
        props = {p.get("name"): _property_value(p.get("value")) for p in tc.iter("property")}
        if props:
            case["properties"] = props
        cases.append(case)
    return cases, None


def count_outcomes(cases: list[dict]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for c in cases:
        counts[c["outcome"]] += 1
    return counts


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests"


def part_tests(ctx: Ctx, data: dict) -> tuple[str, str | None]:
    """The tests that need the GPU (-m gpu, in parallel when xdist is there), and the dispatcher's file,
    whose tests are unmarked (-m gpu would drop them), first and under its own cap."""
    runs = [("dispatch", ["tests/test_ops_dispatch.py"], DISPATCH_SHARE * ctx.left(), False),
            ("gpu", ["-m", "gpu", "tests/"], None, True)]
    data.update(runs={}, notes=[])
    cases: list[dict] = []
    outcome: list[tuple[str, str]] = []  # (status, reason) per run
    for name, select, cap, parallel in runs:
        opts, notes = pytest_options(ctx.probe, parallel)
        data["notes"] += [n for n in notes if n not in data["notes"]]
        junit = ctx.scratch / f"junit-{name}.xml"
        argv = [ctx.args.python, "-m", "pytest", *select, *opts, f"--junitxml={junit}"]
        deadline = None if cap is None else time.monotonic() + cap
        cmd = ctx.run(f"tests-{name}", argv, deadline=deadline, stop_signal=signal.SIGINT, grace=PYTEST_GRACE_S)
        run_cases, junit_error = parse_junit(junit)
        counts = count_outcomes(run_cases)
        data["runs"][name] = {**cmd.record(lines=15), "junit": junit_error or "ok", "counts": counts}
        cases += run_cases
        outcome.append(_run_status(name, cmd, junit_error, counts))
        _absorb_cases(data, cases)
        ctx.report.write()
    status = next((s for s in ("timeout", "error", "failed") if any(o[0] == s for o in outcome)), "ok")
    return status, "; ".join(r for _, r in outcome)


def _run_status(name: str, cmd: Cmd, junit_error: str | None, counts: dict[str, int]) -> tuple[str, str]:
    if cmd.timed_out:
        return "timeout", f"{name}: {cmd.why()} ({_counts_text(counts)} before)"
    if junit_error:
        return "error", f"{name}: no junit report ({junit_error}); {cmd.why()}"
    if counts["failed"] or counts["error"] or cmd.rc != 0 or not counts["passed"]:
        return "failed", f"{name}: {_counts_text(counts)} (pytest exit {cmd.rc})"
    return "ok", f"{name}: {_counts_text(counts)}"


def _absorb_cases(data: dict, cases: list[dict]) -> None:
    data["counts"] = count_outcomes(cases)
    failures = [c for c in cases if c["outcome"] in ("failed", "error")]
    data["failures"] = failures[:MAX_FAILURES]  # the counts have them all
    data["skipped"] = [{"test": c["test"], "message": c.get("message", "")} for c in cases if c["outcome"] == "skipped"]
    data["durations"] = [{"test": c["test"], "outcome": c["outcome"], "seconds": c["seconds"]}
                         for c in sorted(cases, key=lambda c: -c["seconds"])]
    data["properties"] = {c["test"]: c["properties"] for c in cases if "properties" in c}
    drift = [p["drift_200_steps"] for p in data["properties"].values() if "drift_200_steps" in p]
    data["drift_200_steps"] = drift[0] if drift else None


# -- parts that write records: step, kernels, graph_ops (and the fakes) -------------------------------

def records_part(kind: str, summarize: Callable[[list[dict]], object] | None = None) -> PartFn:
    """A part whose child (``--child kind``) writes {"records": [...]} after every measurement: mirrored
    into the report as it grows, summarized by ``summarize``."""
    def run(ctx: Ctx, data: dict) -> tuple[str, str | None]:
        part_file = ctx.scratch / f"{kind}.json"
        watch = FileWatch(part_file)

        def mirror() -> None:
            if watch.changed():
                _absorb_records(data, *read_json(part_file), summarize)
                ctx.report.write()
        try:
            cmd = ctx.child(kind, part_file, on_tick=mirror)
        finally:  # also when the driver is stopped: the last records written count
            mirror()
        data["log_tail"] = cmd.spawn_error or tail(cmd.log)
        return records_status(cmd, data)
    return run


def _absorb_records(data: dict, doc: object, error: str | None,
                    summarize: Callable[[list[dict]], object] | None) -> None:
    records = doc.get("records") if isinstance(doc, dict) else None
    if error or not isinstance(records, list):
        data["part_file"] = error or "no 'records' list"  # the records read before stay
        return
    data.pop("part_file", None)
    data["records"] = records
    if "meta" in doc:
        data["meta"] = doc["meta"]
    if summarize:
        try:
            data["summary"] = summarize(records)
        except Exception as exc:  # noqa: BLE001 - a record of an unexpected shape must not stop the measuring
            data["summary"] = f"cannot summarize: {type(exc).__name__}: {exc}"


def records_status(cmd: Cmd, data: dict) -> tuple[str, str]:
    records = data.get("records") or []
    if cmd.timed_out:
        return "timeout", f"{cmd.why()}; {len(records)} records kept"
    if not cmd.ok:
        return "error", f"{cmd.why()}; {len(records)} records kept"
    if data.get("part_file"):
        return "error", f"part file {data['part_file']}"
    if not records:
        return "failed", "no records"
    bad = [r for r in records if not isinstance(r, dict) or "error" in r]
    if bad:
        first = bad[0].get("error") if isinstance(bad[0], dict) else bad[0]
        return "failed", f"{len(bad)} of {len(records)} measurements failed; first: {last_line(str(first))}"
    return "ok", f"{len(records)} records"


def _value(rec: dict | None, key: str) -> float | None:
    v = rec.get(key) if rec else None
    return v if isinstance(v, (int, float)) else None


def _met(value: float | None, op: str, threshold: float) -> bool | None:
    if value is None:
        return None
    return {">=": value >= threshold, "<=": value <= threshold, ">": value > threshold}[op]


def step_targets(records: list[dict]) -> list[dict]:
    """The step bench against the targets: fast fp32 decides, fast bf16 shown beside; None: not measured."""
    fast = [r for r in records if isinstance(r, dict) and r.get("mode") == "fast" and "error" not in r]

    def pick(batch: int | None, precision: str, key: str) -> float | None:
        values = [_value(r, key) for r in fast if r.get("precision") == precision and batch in (None, r.get("batch_size"))]
        values = [v for v in values if v is not None]
        if not values:
            return None
        return max(values) if batch is None else values[0]
    rows = []
    for name, batch, key, op, threshold in STEP_TARGETS:
        fp32 = pick(batch, "fp32", key)
        rows.append({"target": name, "key": key, "threshold": f"{op} {threshold:g}", "fp32": fp32,
                     "met": _met(fp32, op, threshold), "bf16": pick(batch, "bf16", key)})
    return rows


def kernel_summary(records: list[dict]) -> list[dict]:
    """Per op, pass and dtype at the largest size: the fused impl's fraction of copy bandwidth and speed-up."""
    ok = [r for r in records if isinstance(r, dict) and "error" not in r and r.get("impl") != "ref"]
    if not ok:
        return []
    top = max(r.get("size", 0) for r in ok)
    return [{k: r.get(k) for k in ("op", "pass", "impl", "dtype", "size", "median_ms", "gbps", "frac_of_copy", "speedup_vs_ref")}
            for r in ok if r.get("size") == top]


# -- part: loop (the CLI as a user runs it) -------------------------------------------------------------

def train_argv(device: str, run_dir: Path) -> list[str]:
    s = LOOP_SIZES[device]
    half, w = s["steps"] // 2, str(s["width"])
    return ["train", "--device", device, "--steps", str(s["steps"]), "--checkpoint-every", str(half),
            "--sample-every", str(half), "--log-every", str(max(1, half // 2)), "--image-size", str(s["image_size"]),
            "--ngf", w, "--nef", w, "--ndf", w, "--batch-size", str(s["batch_size"]), "--run-dir", str(run_dir)]


def latest_checkpoint(run_dir: Path) -> Path:
    folder = run_dir / "checkpoints"
    return folder / (folder / "latest").read_text().strip()


def seed_resume_run(src: Path, dst: Path) -> str:
    """``dst`` = run ``src`` as it stood at its checkpoint before the last: that file, ``latest`` pointing
    at it, the config. Returns the file's name."""
    final = latest_checkpoint(src).name
    earlier = [p for p in sorted((src / "checkpoints").glob("step_*.safetensors")) if p.name != final]
    if not earlier:
        raise FileNotFoundError(f"no checkpoint before {final} in {src}")
    folder = dst / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy2(earlier[-1], folder / earlier[-1].name)
    (folder / "latest").write_text(earlier[-1].name + "\n")
    shutil.copy2(src / "config.json", dst / "config.json")
    return earlier[-1].name


def _cli(ctx: Ctx, data: dict, name: str, args: list[str]) -> Cmd:
    cmd = ctx.run(f"loop-{name}", [ctx.args.python, "-m", "bicycle.cli", *args])
    data[name] = cmd.record(lines=10)
    ctx.report.write()
    return cmd


def _compare(ctx: Ctx, data: dict, name: str, a: Path, b: Path) -> dict:
    part_file = ctx.scratch / f"compare-{name}.json"
    cmd = ctx.child("compare", part_file, str(a), str(b), name=f"loop-compare-{name}")
    doc, error = read_json(part_file)
    data[name] = doc if cmd.ok and isinstance(doc, dict) else {"error": cmd.why() if not cmd.ok else f"result {error}"}
    ctx.report.write()
    return data[name]


def part_loop(ctx: Ctx, data: dict) -> tuple[str, str | None]:
    """train A (checkpoints half-way and at the end), sample from it, B = A's half-way checkpoint resumed
    to the end, B's final weights against A's; when they differ, a second fresh run A2 against A tells
    resumption apart from run-to-run nondeterminism."""
    root = ctx.scratch / "loop"
    a, b, a2 = root / "A", root / "B", root / "A2"
    data["sizes"] = LOOP_SIZES[ctx.device]
    train_a = _cli(ctx, data, "train_a", train_argv(ctx.device, a))
    if not train_a.ok:
        return ("timeout" if train_a.timed_out else "failed"), f"train A: {train_a.why()}"
    problems = []
    sample = _cli(ctx, data, "sample", ["sample", "--checkpoint", str(a), "--data", "shapes", "--out", str(root / "S"),
                                        "--samples", "3", "--inputs", "2", "--device", ctx.device])
    data["sample"]["files"] = sum(1 for p in (root / "S").rglob("*") if p.is_file())
    if not sample.ok:
        problems.append(f"sample: {sample.why()}")
    data["resumed_from"] = seed_resume_run(a, b)
    resume = _cli(ctx, data, "resume_b", ["train", "--resume", str(b)])
    if not resume.ok:
        problems.append(f"resume: {resume.why()}")
        return ("timeout" if resume.timed_out else "failed"), "; ".join(problems)
    same = _compare(ctx, data, "resume", latest_checkpoint(a), latest_checkpoint(b))
    if "error" in same:
        problems.append(f"compare: {same['error']}")
    elif not same["exact"] and ctx.left() > train_a.seconds + 15:
        if _cli(ctx, data, "train_a2", train_argv(ctx.device, a2)).ok:
            _compare(ctx, data, "run_to_run", latest_checkpoint(a), latest_checkpoint(a2))
    if problems:
        return "failed", "; ".join(problems)
    return "ok", f"train, sample, resume ran; {resume_text(data)}"


def resume_text(data: dict) -> str:
    def one(c: dict | None) -> str:
        if not c:
            return "not measured"
        if "error" in c:
            return f"error ({last_line(str(c['error']))})"
        w = c["groups"].get("weights", {})
        if c["exact"]:
            return "exact"
        return (f"not exact (weights: {w.get('differing')}/{w.get('tensors')} tensors differ, max |diff| "
                f"{_fmt(w.get('max_abs_diff'), '.3g')})")
    text = f"resume: {one(data.get('resume'))}"
    if "run_to_run" in data:
        text += f"; two fresh runs: {one(data['run_to_run'])}"
    return text


# -- part: ddp (one rank under torchrun: the data-parallel code path on this device) ---------------------

def part_ddp(ctx: Ctx, data: dict) -> tuple[str, str | None]:
    """torchrun with world size 1: DDP eager (the default under torchrun on CUDA), then, on CUDA, DDP inside
    the captured iteration (--cuda-graphs, opt-in); each must train to the end and write its checkpoint."""
    root = ctx.scratch / "ddp"
    runs = [("eager", [])] + ([("graphs", ["--cuda-graphs"])] if ctx.device == "cuda" else [])
    problems = []
    for name, extra in runs:
        argv = [ctx.args.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "bicycle",
                *train_argv(ctx.device, root / name), *extra]
        cmd = ctx.run(f"ddp-{name}", argv)
        data[name] = cmd.record(lines=10)
        data[name]["checkpoint"] = (root / name / "checkpoints" / "latest").is_file()
        ctx.report.write()
        if not cmd.ok or not data[name]["checkpoint"]:
            problems.append(f"{name}: {cmd.why() if not cmd.ok else 'no checkpoint written'}")
    if problems:
        return "failed", "; ".join(problems)
    return "ok", f"torchrun world size 1 trained: {', '.join(n for n, _ in runs)}"


# -- the parts -----------------------------------------------------------------------------------------

# In run order, by value: the step benchmark (the headline numbers) right after env. Caps and floors are
# shares of the budget; expect_s are desk estimates for an H100 (cuDNN tuning at 256 px included).
PARTS: dict[str, Part] = {
    "env": Part(part_env, 0.08, 0.02, 15, on_device=False),
    "step": Part(records_part("step", step_targets), 0.40, 0.25, 120),
    "kernels": Part(records_part("kernels", kernel_summary), 0.08, 0.03, 20),
    "graph_ops": Part(records_part("graph_ops"), 0.06, 0.02, 15, cuda_only=True),
    "tests": Part(part_tests, 0.32, 0.10, 100, cuda_only=True),
    "loop": Part(part_loop, 0.18, 0.08, 50),
    "ddp": Part(part_ddp, 0.15, 0.05, 40),
}
FAKE_PARTS: dict[str, Part] = {name: Part(records_part(name), 2, 1, on_device=False, probed=False, shares=False)
                               for name in ("fake-ok", "fake-measure", "fake-error", "fake-import", "fake-hang",
                                            "fake-truncated")}
ALL_PARTS = {**PARTS, **FAKE_PARTS}


def sleeper(name: str, seconds: float) -> PartFn:
    """A rehearsal part: a child that sleeps ``seconds`` and writes one record."""
    def run(ctx: Ctx, data: dict) -> tuple[str, str | None]:
        part_file = ctx.scratch / f"rehearse-{name}.json"
        cmd = ctx.child("sleep", part_file, f"{seconds:.3f}", name=f"rehearse-{name}")
        _absorb_records(data, *read_json(part_file), None)
        return records_status(cmd, data)
    return run


def part_for(ctx: Ctx, name: str) -> Part:
    """The part ``name`` runs as: itself, or under ``--rehearse`` (real parts only) its sleeping stand-in."""
    part = ALL_PARTS[name]
    if ctx.args.rehearse is None or name not in PARTS:
        return part
    return Part(sleeper(name, part.expect_s * ctx.args.rehearse), part.cap, part.floor, part.expect_s,
                on_device=False, probed=False)


def precheck(part: Part, ctx: Ctx) -> tuple[str, str] | None:
    """(status, reason) for a part that cannot run here, else None."""
    if part.cuda_only and ctx.device != "cuda":
        return "skipped", "needs CUDA (--device cpu)"
    if part.on_device and ctx.device == "cuda":
        if "error" in ctx.probe:
            return "error", f"the probe failed: {ctx.probe['error']}"
        if not ctx.probe.get("cuda_available"):
            return "skipped", "no CUDA: torch.cuda.is_available() is False"
    return None


def run_part(ctx: Ctx, name: str, later: list[Part], end: float) -> None:
    part, rec = part_for(ctx, name), ctx.report.part(name)
    pre = precheck(part, ctx)
    if pre:
        rec.update(status=pre[0], reason=pre[1])
        ctx.report.write()
        ctx.log(f"{name}: {pre[0]}: {pre[1]}")
        return
    left, budget = end - time.monotonic(), ctx.args.budget
    reserve = sum(p.floor_s(budget) for p in later if precheck(p, ctx) is None)
    limit = min(part.cap_s(budget), max(left - reserve, part.floor_s(budget)), left)
    if limit < min(part.floor_s(budget), MIN_PART_S):
        rec.update(status="skipped", reason=f"no budget left ({left:.0f} s)")
        ctx.report.write()
        ctx.log(f"{name}: skipped: {rec['reason']}")
        return
    t = time.monotonic()
    ctx.deadline = t + limit
    rec.update(status="running", limit_s=round(limit), started=utc_now())
    ctx.report.write()
    ctx.log(f"{name}: running (limit {limit:.0f} s)")
    try:
        status, reason = part.run(ctx, rec["data"])
    except Stopped as exc:
        rec.update(status="timeout", reason=f"the driver got {exc} during this part (the overall timeout?)",
                   seconds=round(time.monotonic() - t, 1))
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in one part must not cost the others
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        status, reason = "error", f"driver error: {last_line(tb)}"
        rec["traceback"] = "\n".join(tb.splitlines()[-12:])
    rec.update(status=status, reason=reason, seconds=round(time.monotonic() - t, 1))
    ctx.report.write()
    ctx.log(f"{name}: {status}: {reason}")


def probe(ctx: Ctx, end: float) -> dict:
    """Versions, CUDA, the revision, from a child that imports torch and the library."""
    part_file = ctx.scratch / "probe.json"
    ctx.deadline = min(end, time.monotonic() + PROBE_SHARE * ctx.args.budget)
    cmd = ctx.child("probe", part_file)
    doc, error = read_json(part_file)
    if cmd.ok and isinstance(doc, dict):
        return doc
    return {"error": cmd.why() if not cmd.ok else f"probe result {error}", "log_tail": tail(cmd.log)}


def select_parts(spec: str | None) -> list[str]:
    if not spec:
        return list(PARTS)
    return list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))


def new_doc(args: argparse.Namespace, selected: list[str]) -> dict:
    parts = {}
    for name in selected:
        if name in ALL_PARTS:
            parts[name] = {"status": "not-run", "reason": None, "seconds": None, "limit_s": None, "data": {}}
        else:
            parts[name] = {"status": "error", "reason": f"unknown part (known: {', '.join(PARTS)})", "data": {}}
    for name in PARTS:
        parts.setdefault(name, {"status": "skipped", "reason": f"not selected (parts: {','.join(selected)})", "data": {}})
    return {"schema": SCHEMA, "started": utc_now(), "updated": None, "finished": False, "device": args.device,
            "budget_s": args.budget, "rehearse": getattr(args, "rehearse", None), "elapsed_s": 0.0, "command": sys.argv,
            "parts_selected": selected, "run_order": [n for n in selected if n in ALL_PARTS],
            "probe": None, "revision": None, "parts": parts, "exit_status": None, "not_ok": None}


def close(ctx: Ctx, selected: list[str], stopped: str | None) -> int:
    _ignore_signals()
    doc = ctx.report.doc
    for name in selected:
        rec = doc["parts"][name]
        if rec["status"] == "not-run" and stopped:
            rec["reason"] = f"the driver got {stopped} before this part"
    doc["not_ok"] = {n: doc["parts"][n]["status"] for n in selected if doc["parts"][n]["status"] != "ok"}
    doc["exit_status"] = 1 if doc["not_ok"] else 0
    doc["finished"] = True
    ctx.report.write()
    return doc["exit_status"]


def drive(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    args.out = Path(args.out).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    selected = select_parts(args.parts)
    report = Report(args.out, new_doc(args, selected), t0)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    ctx = Ctx(args, report, scratch, env, t0)
    if args.keep_scratch:
        ctx.log(f"scratch: {scratch}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    end = t0 + args.budget - END_RESERVE_S
    stopped = None
    try:
        report.write()
        runnable = [n for n in selected if n in ALL_PARTS]
        if any(part_for(ctx, n).probed for n in runnable):
            ctx.probe = probe(ctx, end)
            report.doc["probe"] = ctx.probe
            report.doc["revision"] = ctx.probe.get("revision")
            ctx.log(f"probe: {ctx.probe.get('error') or ctx.probe.get('device_name') or 'no CUDA device'}")
        for i, name in enumerate(runnable):
            run_part(ctx, name, [part_for(ctx, n) for n in runnable[i + 1:]], end)
    except Stopped as exc:
        stopped = str(exc)
        ctx.log(f"stopped by {stopped}")
    finally:
        status = close(ctx, selected, stopped)
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(summary_text(report.doc), flush=True)
    return status


# -- the summary table ---------------------------------------------------------------------------------

def _fmt(v: object, spec: str = ".2f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def summary_text(doc: dict) -> str:
    probe_info = doc.get("probe") or {}
    rev = doc.get("revision") or {}
    commit = str(rev.get("commit") or "?")[:12] + (" (dirty)" if rev.get("dirty") else "")
    versions = (f"torch {probe_info.get('torch')} cuda {probe_info.get('cuda')} triton {probe_info.get('triton')}"
                if probe_info else "no probe")
    lines = [f"bicycle GPU check: commit {commit}; {probe_info.get('device_name') or 'no CUDA device'} "
             f"(--device {doc['device']}); {versions}",
             f"budget {doc['budget_s']:.0f} s, elapsed {doc['elapsed_s']:.0f} s, "
             f"{'finished' if doc['finished'] else 'NOT finished (still running, or killed)'}",
             f"{'part':<15}{'status':<9}{'secs':>6}{'limit':>6}  reason"]
    for name, rec in doc["parts"].items():
        reason = str(rec.get("reason") or "")
        lines.append(f"{name:<15}{rec['status']:<9}{_fmt(rec.get('seconds'), '.0f'):>6}{_fmt(rec.get('limit_s'), '.0f'):>6}  "
                     f"{reason[:110]}")
    lines += _section("speed", lambda _: speed_lines(doc), {})
    for part, fn in (("tests", _tests_lines), ("step", _step_lines), ("kernels", _kernel_lines),
                     ("graph_ops", _graph_ops_lines), ("loop", _loop_lines)):
        lines += _section(part, fn, doc["parts"].get(part, {}).get("data", {}))
    if doc.get("exit_status") is not None:
        not_ok = ", ".join(f"{n} ({s})" for n, s in doc["not_ok"].items()) or "none"
        lines.append(f"exit status {doc['exit_status']}; not ok: {not_ok}")
    return "\n".join(lines)


def speed_table(records: list[dict], device_name: str | None) -> list[dict]:
    """Per paper batch size: ms/iter and img/s of the fast path (fp32, bf16), the in-run eager reference and
    the original implementation's published H100 figures; the fast fp32 ratio to the original only when
    this device is an H100 (None: not measured)."""
    ok = [r for r in records if isinstance(r, dict) and "error" not in r]

    def ms(mode: str, precision: str, batch: int) -> float | None:
        return next((_value(r, "ms_per_iter") for r in ok if r.get("mode") == mode and r.get("precision") == precision
                     and r.get("batch_size") == batch), None)
    h100 = "H100" in (device_name or "")
    rows = []
    for batch, original in ORIGINAL_H100_MS.items():
        fast = ms("fast", "fp32", batch)
        rows.append({"batch": batch, "fast_fp32_ms": fast, "fast_bf16_ms": ms("fast", "bf16", batch),
                     "eager_ms": ms("eager", "fp32", batch), "original_h100_ms": original,
                     "fast_fp32_vs_original": original / fast if fast and h100 else None})
    return rows


def speed_lines(doc: dict) -> list[str]:
    device = (doc.get("probe") or {}).get("device_name")
    step = doc["parts"].get("step", {}).get("data", {})
    rows = speed_table(_dicts(step.get("records")), device)

    def cell(ms: float | None, batch: int) -> str:
        return f"{ms:7.1f} ms {batch / ms * 1e3:7.1f} img/s" if ms else f"{'n/a':>7}    {'n/a':>7}      "
    lines = [f"speed: paper configuration (256 px, unet256, z at all layers, bs as shown), on "
             f"{device or 'no CUDA device'}; original = junyanz/BicycleGAN fp32 eager, published H100 figures",
             f"  {'batch':>5}  {'fast fp32':<26}{'fast bf16':<26}{'eager, this run':<26}{'original (H100)':<26}"
             f"fast fp32 vs original"]
    for r in rows:
        b = r["batch"]
        ratio = r["fast_fp32_vs_original"]
        ratio_text = f"{ratio:.2f}x" if ratio else ("n/a" if "H100" in (device or "") else "n/a (not an H100)")
        lines.append(f"  {b:>5}  {cell(r['fast_fp32_ms'], b):<26}{cell(r['fast_bf16_ms'], b):<26}"
                     f"{cell(r['eager_ms'], b):<26}{cell(r['original_h100_ms'], b):<26}{ratio_text}")
    return lines


def _section(part: str, fn: Callable[[dict], list[str]], data: dict) -> list[str]:
    """A part's lines of the table: data of an unexpected shape costs those lines, never the report."""
    failed_summary = [f"{part}: ({data['summary']})"] if isinstance(data.get("summary"), str) else []
    try:
        return failed_summary + fn(data)
    except Exception as exc:  # noqa: BLE001
        return failed_summary + [f"{part}: (cannot summarize: {type(exc).__name__}: {exc})"]


def _s(v: object) -> str:
    return "" if v is None else str(v)


def _dicts(items: object) -> list[dict]:
    return [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []


def _loop_lines(data: dict) -> list[str]:
    return [f"loop: {resume_text(data)}"] if "resume" in data else []


def _tests_lines(data: dict) -> list[str]:
    lines = [f"test failure: {f['test']}: {last_line(f.get('message') or f.get('text') or '')[:120]}"
             for f in data.get("failures", [])[:8]]
    drift = data.get("drift_200_steps")
    if isinstance(drift, dict):
        worst = drift.get("max_rel_diff_per_loss") or {}
        worst_text = ", ".join(f"{k} {_fmt(v, '.2e')}" for k, v in worst.items())
        lines.append(f"drift over 200 steps (graph vs eager): first step beyond rtol 1e-3: "
                     f"{drift.get('first_step_beyond_rtol_1e-3')}; max rel diff: {worst_text}")
    return lines


def _step_lines(data: dict) -> list[str]:
    records = _dicts(data.get("records"))
    if not records:
        return []
    lines = [f"step: {'mode':<12}{'prec':<6}{'batch':>6}{'ms/iter':>9}{'img/s':>9}{'x eager':>8}{'wall/kern':>10}"
             f"{'kernels':>8}{'wait %':>8}"]
    for r in records:
        if "error" in r:
            lines.append(f"      {_s(r.get('mode')):<12}{_s(r.get('precision')):<6}{_s(r.get('batch_size')):>6}  "
                         f"error: {last_line(str(r['error']))[:90]}")
            continue
        wait = r.get("data_wait_fraction")
        lines.append(f"      {_s(r.get('mode')):<12}{_s(r.get('precision')):<6}{_s(r.get('batch_size')):>6}"
                     f"{_fmt(r.get('ms_per_iter')):>9}{_fmt(r.get('img_per_s'), '.1f'):>9}{_fmt(r.get('speedup_vs_eager')):>8}"
                     f"{_fmt(r.get('wall_over_kernel_time')):>10}{_fmt(r.get('kernels_per_iter'), '.0f'):>8}"
                     f"{_fmt(100 * wait if isinstance(wait, (int, float)) else None):>8}")
    for t in _dicts(data.get("summary")):
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"target: {t['target']:<50} fp32 {_fmt(t['fp32'], '.3g'):>7} {met:<13} bf16 {_fmt(t['bf16'], '.3g')}")
    return lines


def _kernel_lines(data: dict) -> list[str]:
    return [f"kernels: {_s(k['op']):<14}{_s(k['pass']):<8}{_s(k['dtype']):<9}size {k['size']}: {k['impl']} "
            f"{_fmt(k['frac_of_copy'])} of copy bandwidth, {_fmt(k['speedup_vs_ref'])}x ref" for k in _dicts(data.get("summary"))]


def _graph_ops_lines(data: dict) -> list[str]:
    return [f"graph_ops: {_s(r.get('op')):<11}{_s(r.get('impl')):<7}us/call eager {_fmt(r.get('us_per_call_eager'), '.1f')}, "
            f"graph {_fmt(r.get('us_per_call_graph'), '.1f')}, kernels {_fmt(r.get('kernels_per_call'), '.0f')}"
            for r in _dicts(data.get("records")) if "error" not in r]


# -- children: the library side ------------------------------------------------------------------------

def _dist_version(name: str) -> str | None:
    import importlib.metadata as md
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def child_probe(part_file: Path, device: str, _args: list[str]) -> None:
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    for dist in ("torch", "triton", "pytest", "pytest-timeout", "pytest-xdist", "safetensors", "numpy"):
        info[dist] = _dist_version(dist)
    import torch

    info["cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["device_name"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
        info["device_count"] = torch.cuda.device_count()
    try:
        from bicycle import ops
        from bicycle.bench.common import revision
        info["revision"] = revision()
        info["bicycle_C"] = ops._ext()[1] or "available"
    except Exception as exc:  # noqa: BLE001 - reported; the parts then fail on their own
        info["bicycle_import_error"] = f"{type(exc).__name__}: {exc}"
    write_json(part_file, info)


def child_step(part_file: Path, device: str, _args: list[str]) -> None:
    from bicycle.bench.step import run_step_bench
    run_step_bench(device, STEP_BATCHES[device], json_path=str(part_file), quick=device != "cuda", keep_going=True,
                   echo=lambda line: print(line, flush=True))


def child_kernels(part_file: Path, device: str, _args: list[str]) -> None:
    from bicycle.bench.ops import format_table, run_kernel_bench
    print(format_table(run_kernel_bench(device, KERNEL_SIZES[device], str(part_file), quick=True, keep_going=True)))


def child_graph_ops(part_file: Path, device: str, _args: list[str]) -> None:
    from bicycle.bench.ops import run_graph_ops_bench
    run_graph_ops_bench(device, str(part_file), keep_going=True)


def _tensor_group(key: str) -> str:
    return "rng" if key.startswith("rng.") else "optimizer" if key.startswith("opt.") else "weights"


def _worst(diffs: list[dict], n: int = 5) -> list[dict]:
    return sorted(diffs, key=lambda d: -(d["max_abs_diff"] if d["max_abs_diff"] is not None else math.inf))[:n]


def child_compare(part_file: Path, _device: str, args: list[str]) -> None:
    """Two checkpoints, tensor by tensor (max |a - b|) and metadata key by key; the torch.backends flags
    a `bicycle train` process starts with."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    import bicycle.train.loop  # noqa: F401 - so that the flags below are as the loop leaves them

    path_a, path_b = args
    ta, tb = load_file(path_a), load_file(path_b)
    groups: dict[str, dict] = {}
    diffs = []
    for key in sorted(set(ta) & set(tb)):
        x, y = ta[key], tb[key]
        same_layout = x.shape == y.shape and x.dtype == y.dtype
        diff = float((x.double() - y.double()).abs().max()) if same_layout and x.numel() else (0.0 if same_layout else None)
        g = groups.setdefault(_tensor_group(key), {"tensors": 0, "differing": 0, "max_abs_diff": 0.0})
        g["tensors"] += 1
        if not (same_layout and torch.equal(x, y)):
            g["differing"] += 1
            g["max_abs_diff"] = None if diff is None or g["max_abs_diff"] is None else max(g["max_abs_diff"], diff)
            diffs.append({"tensor": key, "max_abs_diff": diff, "max_abs": float(x.double().abs().max()) if x.numel() else 0.0})
    with safe_open(path_a, "pt") as fa, safe_open(path_b, "pt") as fb:
        ma, mb = fa.metadata() or {}, fb.metadata() or {}
    meta_diff = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
    only = sorted(set(ta) ^ set(tb))
    write_json(part_file, {
        "a": path_a, "b": path_b, "exact": not diffs and not only and not meta_diff, "groups": groups,
        "worst": {g: _worst([d for d in diffs if _tensor_group(d["tensor"]) == g]) for g in groups},
        "only_in_one": only[:20], "metadata_differs": meta_diff,
        "flags": {"cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
                  "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                  "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                  "note": "torch.backends flags in a fresh process after importing bicycle.train.loop"},
    })


def child_sleep(part_file: Path, _device: str, args: list[str]) -> None:
    seconds = float(args[0])
    time.sleep(seconds)
    write_json(part_file, {"records": [{"slept_s": seconds}]})


def _fake(kind: str) -> Callable[[Path, str, list[str]], None]:
    """Test-only children: a good part, a failing measurement, a crash, a missing module, a hang, a
    truncated part file."""
    def run(part_file: Path, _device: str, _args: list[str]) -> None:
        if kind == "fake-ok":
            write_json(part_file, {"records": [{"n": 1}, {"n": 2}]})
        elif kind == "fake-measure":
            write_json(part_file, {"records": [{"n": 1}, {"n": 2, "error": "Traceback\nValueError: injected measurement failure"}]})
        elif kind == "fake-error":
            raise RuntimeError("injected failure")
        elif kind == "fake-import":
            importlib.import_module("bicycle_no_such_module")
        elif kind == "fake-hang":
            write_json(part_file, {"records": [{"n": 1}]})
            time.sleep(3600)
        elif kind == "fake-truncated":
            part_file.write_text('{"records": [{"n": 1}, {"n"')
    return run


CHILDREN: dict[str, Callable[[Path, str, list[str]], None]] = {
    "probe": child_probe, "step": child_step, "kernels": child_kernels, "graph_ops": child_graph_ops,
    "compare": child_compare, "sleep": child_sleep, **{name: _fake(name) for name in FAKE_PARTS},
}


# -- command line --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="results folder (default $OUT)")
    p.add_argument("--parts", default=os.environ.get("PARTS"),
                   help=f"comma-separated, run in this order (default $PARTS, else all: {','.join(PARTS)})")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for everything; each part's cap and floor are shares of it (default {DEFAULT_BUDGET_S:g})")
    p.add_argument("--rehearse", type=float, metavar="SCALE",
                   help="run each selected real part as a sleep of its expected H100 seconds x SCALE (no torch)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--python", default=sys.executable, help="the interpreter for the children")
    p.add_argument("--install", default="not recorded", help="what the wrapper's install step did")
    p.add_argument("--install-log", help="the install step's log (its tail goes into the report)")
    p.add_argument("--install-seconds", type=float)
    p.add_argument("--keep-scratch", action="store_true", help="keep the scratch folder (its path is in the log)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--part-file", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        CHILDREN[args.child](Path(args.part_file), args.device, args.rest)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
