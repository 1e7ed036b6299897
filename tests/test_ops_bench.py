"""The kernel bench as library code and as a click command (tiny sizes: this checks shape, not speed)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest_ops import use_triton_interpreter_without_cuda

use_triton_interpreter_without_cuda()

from bicycle import ops  # noqa: E402
from bicycle.commands.bench import bench  # noqa: E402
from bicycle.bench.ops import run_kernel_bench  # noqa: E402

KEYS = {"op", "impl", "pass", "dtype", "shape", "size", "median_ms", "p10_ms", "p90_ms", "gbps", "copy_gbps",
        "frac_of_copy", "speedup_vs_ref", "threads", "device", "torch", "triton"}


def test_run_kernel_bench_records_and_json(tmp_path):
    path = tmp_path / "k.json"
    records = run_kernel_bench("cpu", [512], str(path), quick=True)
    assert records and all(KEYS <= set(r) for r in records)
    impls = {r["impl"] for r in records}
    assert impls == ({"ref", "cpp"} if ops._ext()[0] is not None else {"ref"})
    ops_seen = {r["op"] for r in records}
    assert {"reparam_kl", "lsgan", "lsgan_d"} <= ops_seen
    for r in records:
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["gbps"] > 0 and r["device"] == "cpu"
        if r["impl"] == "ref":
            assert r["speedup_vs_ref"] == pytest.approx(1.0)
    data = json.loads(path.read_text())
    assert data["meta"]["device"] == "cpu" and len(data["records"]) == len(records)


def test_bench_command_prints_a_table(tmp_path):
    result = CliRunner().invoke(bench, ["--device", "cpu", "--quick", "--size", "256", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert "reparam_kl" in result.output and "x ref" in result.output and (tmp_path / "b.json").exists()


def test_bench_command_rejects_bad_size():
    result = CliRunner().invoke(bench, ["--device", "cpu", "--size", "0"])
    assert result.exit_code == 2 and "--size must be >= 1" in result.output
