"""CPU rehearsal of the GPU check (benchmarks/gpu_check.sh -> benchmarks/gpu_check.py): every failure path
on a machine without a GPU, through the test-only parts fake-* (a good part, a failing measurement, a
crash, a missing module, a hang, a truncated part file), the real parts skipping without CUDA, PARTS=,
a budget running out, the driver killed mid-part; and the parsing that only runs on a GPU (junit
outcomes and properties, the step targets) on made-up inputs."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "gpu_check.py"
REAL = ["env", "step", "kernels", "graph_ops", "tests", "loop", "ddp"]  # in run order
FAKES = ["fake-ok", "fake-measure", "fake-error", "fake-import", "fake-hang", "fake-truncated"]
STATUSES = {"ok", "failed", "error", "timeout", "skipped", "not-run"}


def _load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", DRIVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = _load_driver()


def _strict_json(path: Path) -> dict:
    def reject(name: str):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(path.read_text(), parse_constant=reject)


def _check_report(out: Path, doc: dict, selected: list[str]) -> None:
    assert doc["schema"] == gc.SCHEMA and doc["finished"] is True
    assert doc["parts_selected"] == selected
    assert set(REAL) | set(selected) <= set(doc["parts"])
    for name, rec in doc["parts"].items():
        assert rec["status"] in STATUSES, (name, rec)
        assert rec["status"] == "ok" or rec["reason"], (name, rec)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"gpu_check.json", "gpu_check.txt"} <= set(files), files


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Every real part and every fake, and an unknown name, in one driver run, reading the report as it
    is rewritten: each read must be a complete JSON document that lists every part."""
    out = tmp_path_factory.mktemp("gpu_check")
    selected = [*REAL, *FAKES, "no-such-part"]
    proc = subprocess.Popen([sys.executable, str(DRIVER), "--out", str(out), "--budget", "120", "--parts", ",".join(selected)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reads = 0
    while proc.poll() is None:
        if (out / "gpu_check.json").exists():
            assert set(selected) <= set(_strict_json(out / "gpu_check.json")["parts"])
            reads += 1
        time.sleep(0.05)
    stdout = proc.stdout.read()
    return out, selected, proc.returncode, stdout, _strict_json(out / "gpu_check.json"), reads


def test_every_part_is_listed_with_its_status_and_reason(full_run):
    out, selected, rc, stdout, doc, reads = full_run
    assert reads > 10
    _check_report(out, doc, selected)
    parts = doc["parts"]
    assert parts["fake-ok"]["status"] == "ok" and parts["fake-ok"]["data"]["records"] == [{"n": 1}, {"n": 2}]
    assert parts["fake-measure"]["status"] == "failed"
    assert "1 of 2 measurements failed" in parts["fake-measure"]["reason"]
    assert "ValueError: injected measurement failure" in parts["fake-measure"]["reason"]
    assert parts["fake-error"]["status"] == "error" and "RuntimeError: injected failure" in parts["fake-error"]["reason"]
    assert parts["fake-import"]["status"] == "error"
    assert "ModuleNotFoundError: No module named 'bicycle_no_such_module'" in parts["fake-import"]["reason"]
    assert parts["fake-hang"]["status"] == "timeout" and parts["fake-hang"]["data"]["records"] == [{"n": 1}]
    assert parts["fake-hang"]["seconds"] <= gc.FAKE_PARTS["fake-hang"].cap_s(120) + 1
    assert parts["fake-truncated"]["status"] == "error" and "unreadable" in parts["fake-truncated"]["reason"]
    assert parts["no-such-part"]["status"] == "error" and "unknown part" in parts["no-such-part"]["reason"]
    assert rc == 1 and doc["exit_status"] == 1
    assert set(doc["not_ok"]) >= {"fake-measure", "fake-error", "fake-import", "fake-hang", "fake-truncated"}


def test_the_summary_table_is_printed_and_saved(full_run):
    out, selected, _, stdout, doc, _ = full_run
    table = (out / "gpu_check.txt").read_text().strip()
    assert table in stdout
    for name in selected:
        assert f"\n{name} " in table
    assert "exit status 1; not ok: " in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what happens without CUDA")
def test_without_cuda_the_gpu_parts_skip_and_env_still_reports(full_run):
    _, _, _, _, doc, _ = full_run
    for name in ("tests", "step", "kernels", "graph_ops", "loop", "ddp"):
        assert doc["parts"][name]["status"] == "skipped", name
        assert doc["parts"][name]["reason"].startswith("no CUDA"), name
    env = doc["parts"]["env"]
    assert env["data"]["bicycle_env"]["rc"] == 0 and "ops (which implementation" in env["data"]["bicycle_env"]["tail"]
    assert env["data"]["versions"]["cuda_available"] is False
    assert doc["revision"]["commit"] is None or len(doc["revision"]["commit"]) == 40
    if env["data"]["nvidia_smi"]["rc"] != 0:  # no nvidia-smi: env says so and fails
        assert env["status"] == "failed" and "nvidia-smi" in env["reason"]


def _wrapper(out: Path, parts: str) -> tuple[int, dict]:
    env = {**os.environ, "OUT": str(out), "PARTS": parts, "INSTALL": "0", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "install: skipped" in proc.stdout, proc.stdout + proc.stderr
    return proc.returncode, _strict_json(out / "gpu_check.json")


def test_the_wrapper_runs_the_chosen_parts_and_every_one_of_them(tmp_path):
    rc, doc = _wrapper(tmp_path / "a", "fake-error,fake-ok")
    _check_report(tmp_path / "a", doc, ["fake-error", "fake-ok"])
    assert rc == 1 and doc["parts"]["fake-error"]["status"] == "error" and doc["parts"]["fake-ok"]["status"] == "ok"
    for name in REAL:
        assert doc["parts"][name]["status"] == "skipped" and "not selected" in doc["parts"][name]["reason"]
    assert doc["probe"] is None  # no part needed torch
    rc, doc = _wrapper(tmp_path / "b", "fake-ok")
    assert rc == 0 and doc["exit_status"] == 0 and doc["not_ok"] == {}


def test_a_spent_budget_skips_the_rest(tmp_path):
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(tmp_path), "--budget", "3.5", "--parts", "fake-hang,fake-ok"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    doc = _strict_json(tmp_path / "gpu_check.json")
    assert proc.returncode == 1
    assert doc["parts"]["fake-hang"]["status"] == "timeout" and doc["parts"]["fake-hang"]["limit_s"] <= 1
    assert doc["parts"]["fake-ok"]["status"] == "skipped" and "no budget left" in doc["parts"]["fake-ok"]["reason"]


def test_a_stopped_driver_still_leaves_every_part_and_its_status(tmp_path):
    proc = subprocess.Popen([sys.executable, str(DRIVER), "--out", str(tmp_path), "--parts", "fake-ok,fake-hang,fake-measure"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = tmp_path / "gpu_check.json"
    deadline = time.monotonic() + 20
    while not (report.exists() and _strict_json(report)["parts"]["fake-hang"]["status"] == "running"):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 1
    doc = _strict_json(report)
    parts = doc["parts"]
    assert doc["finished"] and parts["fake-ok"]["status"] == "ok"
    assert parts["fake-hang"]["status"] == "timeout" and "SIGTERM" in parts["fake-hang"]["reason"]
    assert parts["fake-measure"]["status"] == "not-run" and "SIGTERM" in parts["fake-measure"]["reason"]


def test_an_interrupted_pytest_still_writes_its_junit_report(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_quick():\n    pass\n\n"
                                           "def test_hangs():\n    time.sleep(60)\n")
    junit = tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={junit}",
            str(tmp_path / "test_slow.py")]
    # 12 s: time for pytest to start and reach the hanging test on a loaded 2-core machine
    cmd = gc.run_cmd(argv, tmp_path / "log", time.monotonic() + 12, dict(os.environ), stop_signal=signal.SIGINT, grace=1)
    cases, error = gc.parse_junit(junit)
    assert cmd.timed_out and cmd.seconds < 14 and error is None
    assert [c["outcome"] for c in cases if c["test"].endswith("test_quick")] == ["passed"]


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_graph" name="test_gpu_ii" time="12.5"><properties>
<property name="drift_200_steps" value="{&quot;max_rel_diff_per_loss&quot;: {&quot;D&quot;: 0.5},
 &quot;first_step_beyond_rtol_1e-3&quot;: 37}" /></properties></testcase>
<testcase classname="tests.test_fused_ops" name="test_a[triton-cuda]" time="0.2"><failure message="assert 1 == 2">long text
E   assert 1 == 2</failure></testcase>
<testcase classname="tests.test_fused_ops" name="test_b" time="0.1"><skipped message="needs X" /></testcase>
<testcase classname="tests.test_fused_ops" name="test_c" time="bad"><error message="fixture broke">trace</error></testcase>
</testsuite></testsuites>"""


def test_children_hear_sigint_even_when_the_driver_was_started_with_it_ignored(tmp_path):
    """As under `cmd &` in a shell script: SIGINT ignored in the driver, inherited by default; not by its parts."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        argv = [sys.executable, "-c", "import signal, time; print(signal.getsignal(signal.SIGINT)); time.sleep(30)"]
        cmd = gc.run_cmd(argv, tmp_path / "log", time.monotonic() + 3, dict(os.environ), stop_signal=signal.SIGINT, grace=1)
    finally:
        signal.signal(signal.SIGINT, old)
    assert cmd.timed_out and cmd.seconds < 6
    assert "default_int_handler" in (tmp_path / "log").read_text()


def test_junit_outcomes_failures_and_the_drift_property(tmp_path):
    (tmp_path / "j.xml").write_text(JUNIT)
    cases, error = gc.parse_junit(tmp_path / "j.xml")
    assert error is None and gc.count_outcomes(cases) == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    data: dict = {}
    gc._absorb_cases(data, cases)
    assert data["drift_200_steps"] == {"max_rel_diff_per_loss": {"D": 0.5}, "first_step_beyond_rtol_1e-3": 37}
    assert [f["test"] for f in data["failures"]] == ["tests.test_fused_ops::test_a[triton-cuda]", "tests.test_fused_ops::test_c"]
    assert "assert 1 == 2" in data["failures"][0]["text"] and data["durations"][0]["seconds"] == 12.5
    (tmp_path / "cut.xml").write_text(JUNIT[:200])
    assert gc.parse_junit(tmp_path / "cut.xml")[0] == [] and "unreadable" in gc.parse_junit(tmp_path / "cut.xml")[1]
    assert gc.parse_junit(tmp_path / "none.xml") == ([], "missing")


def test_pytest_options_say_what_is_missing():
    opts, notes = gc.pytest_options({"pytest-timeout": "2.4.0", "pytest-xdist": "3.8.0"}, parallel=True)
    assert f"--timeout={gc.PER_TEST_TIMEOUT_S}" in opts and "-n" in opts and notes == []
    opts, notes = gc.pytest_options({}, parallel=True)
    assert not any(o.startswith("--timeout") for o in opts) and "-n" not in opts
    assert any("pytest-timeout is not installed" in n for n in notes)


def _fast(batch: int, precision: str, **values) -> dict:
    return {"mode": "fast", "batch_size": batch, "precision": precision, **values}


def test_step_targets_fp32_decides_bf16_beside_missing_is_not_measured():
    records = [{"mode": "eager", "batch_size": 2, "precision": "fp32", "speedup_vs_eager": 1.0},
               _fast(2, "fp32", speedup_vs_eager=3.5, wall_over_kernel_time=1.3, img_per_s=310.0, data_wait_fraction=0.01),
               _fast(2, "bf16", speedup_vs_eager=5.0, img_per_s=450.0, data_wait_fraction=0.02),
               _fast(32, "fp32", error="Traceback\nRuntimeError: CUDA out of memory")]
    rows = {r["target"]: r for r in gc.step_targets(records)}
    assert rows["fast >= 3x in-run eager, batch 2"]["met"] is True
    assert rows["fast >= 3x in-run eager, batch 2"]["bf16"] == 5.0
    assert rows["fast wall <= 1.15x kernel-time sum, batch 2"]["met"] is False
    assert rows["goal: fast >= 1000 img/s, batch 32"]["met"] is None  # the batch-32 record failed
    assert rows["fast data_wait_fraction <= 5%, every batch (max)"]["fp32"] == 0.01


def test_the_report_never_holds_nan(tmp_path):
    gc.write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf")]})
    assert _strict_json(tmp_path / "x.json") == {"a": "nan", "b": ["inf"]}


def test_records_of_an_unexpected_shape_cost_their_lines_not_the_report(tmp_path):
    import argparse
    doc = gc.new_doc(argparse.Namespace(device="cuda", budget=10.0), ["step", "kernels"])
    step, kernels = doc["parts"]["step"]["data"], doc["parts"]["kernels"]["data"]
    gc._absorb_records(step, {"records": [{"mode": None, "batch_size": [2]}, "garbage", {"mode": "fast", "error": 3}]},
                       None, gc.step_targets)
    gc._absorb_records(kernels, {"records": [{"impl": "triton", "size": "big"}, {"impl": "triton", "size": 2}]},
                       None, gc.kernel_summary)
    assert "cannot summarize" in kernels["summary"]
    gc.Report(tmp_path, doc, time.monotonic()).write()
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "step:" in text and "kernels: (cannot summarize" in text
    assert _strict_json(tmp_path / "gpu_check.json")["parts"]["step"]["data"]["records"][1] == "garbage"


def test_the_parts_run_by_value_with_caps_and_floors_as_shares_of_the_budget():
    assert list(gc.PARTS) == REAL and REAL[:2] == ["env", "step"]  # the headline numbers right after env
    for name, part in gc.PARTS.items():
        assert part.shares and 0 < part.floor < part.cap <= 0.5, name
        assert part.cap_s(800) == 2 * part.cap_s(400)  # raising the budget raises every cap
        assert part.cap_s(gc.DEFAULT_BUDGET_S) >= 1.2 * part.expect_s, name  # room over the desk estimate
    assert sum(p.expect_s for p in gc.PARTS.values()) <= 0.95 * gc.DEFAULT_BUDGET_S


def test_a_rehearsal_with_every_part_taking_its_expected_time_fits_the_default_budget(tmp_path):
    """Each real part sleeps its expected H100 seconds x 0.04 in a budget of the default x 0.04 (+ the
    driver's fixed reserve and child start-ups, which do not scale): every part runs, in order, and is ok."""
    scale = 0.04
    budget = gc.DEFAULT_BUDGET_S * scale + 4
    proc = subprocess.run([sys.executable, str(DRIVER), "--out", str(tmp_path), "--rehearse", str(scale), "--budget", str(budget)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    doc = _strict_json(tmp_path / "gpu_check.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert doc["run_order"] == REAL and list(doc["parts"]) == REAL
    started = [doc["parts"][n]["started"] for n in REAL]
    assert started == sorted(started)
    for name in REAL:
        rec = doc["parts"][name]
        assert rec["status"] == "ok" and rec["data"]["records"] == [{"slept_s": round(gc.PARTS[name].expect_s * scale, 3)}]
    assert doc["elapsed_s"] <= budget


def test_the_speed_table_sets_the_fast_path_beside_eager_and_the_original():
    recs = [{"mode": "eager", "precision": "fp32", "batch_size": 2, "ms_per_iter": 60.0},
            {"mode": "fast", "precision": "fp32", "batch_size": 2, "ms_per_iter": 20.0},
            {"mode": "fast", "precision": "bf16", "batch_size": 2, "ms_per_iter": 16.0},
            {"mode": "fast", "precision": "fp32", "batch_size": 8, "error": "boom"}]
    rows = {r["batch"]: r for r in gc.speed_table(recs, "NVIDIA H100 80GB HBM3")}
    assert set(rows) == {2, 8, 32}
    assert rows[2]["fast_fp32_ms"] == 20.0 and rows[2]["fast_bf16_ms"] == 16.0 and rows[2]["eager_ms"] == 60.0
    assert rows[2]["original_h100_ms"] == 67.0 and rows[2]["fast_fp32_vs_original"] == pytest.approx(67.0 / 20.0)
    assert rows[8]["fast_fp32_ms"] is None and rows[8]["fast_fp32_vs_original"] is None
    h200 = {r["batch"]: r for r in gc.speed_table(recs, "NVIDIA H200")}
    assert h200[2]["fast_fp32_vs_original"] is None  # a ratio against the original only on an H100
    doc = {"probe": {"device_name": "NVIDIA H200"}, "parts": {"step": {"data": {"records": recs}}}}
    text = "\n".join(gc.speed_lines(doc))
    assert "20.0 ms" in text and "100.0 img/s" in text and "n/a (not an H100)" in text and "92.9 ms" in text


def test_the_rehearsal_text_carries_the_speed_table_with_unmeasured_cells(full_run):
    out, *_ = full_run
    table = (out / "gpu_check.txt").read_text()
    assert "speed: paper configuration" in table and "67.0 ms" in table and "n/a" in table
