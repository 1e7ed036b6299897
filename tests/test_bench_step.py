"""bicycle bench --step / --graph-ops / --prep on CPU (tiny: this checks the records, not speed)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from bicycle.commands.bench import bench
from bicycle.bench.ops import paper_op_shapes, run_graph_ops_bench
from bicycle.bench.step import REQUIRED_KEYS, step_config
from bicycle.train.reference import reference_step


def test_bench_step_cpu_quick_writes_labelled_records(tmp_path):
    path = tmp_path / "step.json"
    r = CliRunner().invoke(bench, ["--step", "--device", "cpu", "--quick", "--json", str(path)])
    assert r.exit_code == 0, r.output
    assert "no CUDA graphs on CPU" in r.output and "ms/iter" in r.output
    records = json.loads(path.read_text())["records"]
    assert {rec["mode"] for rec in records} == {"eager", "fused-eager"}
    for rec in records:
        assert set(REQUIRED_KEYS) <= set(rec)
        assert rec["graphs"] is False and rec["device"] == "cpu" and rec["precision"] == "fp32"
        assert rec["ms_per_iter"] > 0 and rec["img_per_s"] > 0 and 0 <= rec["data_fraction"] < 1
        assert rec["kernels_per_iter"] is None and rec["peak_mem_bytes"] is None  # CUDA-only measures
    eager = next(rec for rec in records if rec["mode"] == "eager")
    assert eager["speedup_vs_eager"] == pytest.approx(1.0)


def test_bench_step_options_are_checked():
    r = CliRunner().invoke(bench, ["--step", "--device", "cpu", "--batch-size", "3"])
    assert r.exit_code == 2 and "even" in r.output
    r = CliRunner().invoke(bench, ["--step", "--prep", "--device", "cpu"])
    assert r.exit_code == 2


def test_graph_ops_bench_is_gpu_only_and_says_so():
    r = CliRunner().invoke(bench, ["--graph-ops", "--device", "cpu"])
    assert r.exit_code == 0 and "GPU only" in r.output
    assert run_graph_ops_bench("cpu") == []


def test_paper_op_shapes():
    shapes = paper_op_shapes("cpu", batch_size=2)
    assert shapes["reparam_kl"] == [1, 8]
    assert shapes["lsgan"] == [[1, 1, 30, 30], [1, 1, 14, 14]]


def test_step_config_is_the_paper_configuration_on_cuda():
    n = step_config("cuda", 8, quick=False).net
    assert (n.backbone, n.image_size, n.inject, n.encoder, n.norm, n.dropout, n.nz, n.d_scales, n.ngf) == \
        ("unet256", 256, "all", "resnet", "instance", True, 8, 2, 64)
    assert step_config("cuda", 8, quick=False).train.batch_size == 8


def _state(cfg, impl: str | None = None):
    from bicycle.build import resolve
    from bicycle.config import replace
    from bicycle.plugins import get_plugins
    from bicycle.train.state import build_state

    reg = get_plugins().registry
    cfg = resolve(replace(cfg, {"train.impl": impl}) if impl else cfg, reg)
    return cfg, build_state(cfg, reg, "cpu", plain_adam=True)


def test_reference_step_trains_every_network():
    cfg, state = _state(step_config("cpu", 2, quick=True))
    nets, opts = state.nets, state.optimizers
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in nets.items()}
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    losses = reference_step(nets, opts, a, b, cfg.net.nz, cfg.loss)
    assert set(losses) == {"G_GAN", "G_GAN2", "G_L1", "kl", "z_L1", "D", "D2"}
    assert all(torch.isfinite(v) for v in losses.values())
    for k, m in nets.items():
        assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), before[k])), k
        assert all(p.requires_grad for p in m.parameters())


def test_prep_bench_quick(tmp_path):
    path = tmp_path / "prep.json"
    r = CliRunner().invoke(bench, ["--prep", "--device", "cpu", "--quick", "--json", str(path)])
    assert r.exit_code == 0, r.output
    records = json.loads(path.read_text())["records"]
    assert records[0]["impl"] == "ref" and records[0]["image_size"] == 64
    for rec in records:
        assert rec["steps_per_s"] > 0 and 0 < rec["prep_fraction"] < 1


def test_reference_step_is_the_same_mathematics_as_train_step():
    """The bench's eager reference (original style) and train_step make the same updates."""
    from bicycle.train.step import train_step

    cfg0 = step_config("cpu", 4, quick=True)
    cfg, s1 = _state(cfg0)
    _, s2 = _state(cfg0, impl="ref")
    n1, o1, n2 = s1.nets, s1.optimizers, s2.nets
    a, b = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(5)
    ref = reference_step(n1, o1, a, b, cfg.net.nz, cfg.loss)
    torch.manual_seed(5)
    noise = {"eps": torch.randn(2, cfg.net.nz), "z": torch.randn(2, cfg.net.nz)}
    got = train_step(s2, a, b, noise)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    # Adam's first step moves each weight by about lr * g / (|g| + eps): where a gradient is at rounding
    # level (~eps; the two sum their backward passes in a different order) the moves differ by a fraction of lr;
    # where the gradient is rounding noise (mathematically 0: biases before instance norm; the two runs' gradients
    # disagree) its sign, and so the move, is arbitrary: up to 2 lr apart.
    lr = cfg.optim.lr
    for k, m in n1.items():
        for p, q in zip(m.parameters(), getattr(n2, k).parameters()):
            rounding = (p.grad - q.grad).abs() > 0.1 * p.grad.abs()  # the two orders disagree: rounding dominates
            allowed = torch.where(rounding, 2.0 * lr, 0.2 * lr) + 1e-5 * q.abs()
            assert ((p - q).abs() <= allowed).all(), (k, (p - q).abs().max())


def test_graph_ops_on_cpu_writes_no_json_and_does_not_claim_to(tmp_path):
    path = tmp_path / "graph_ops.json"
    r = CliRunner().invoke(bench, ["--graph-ops", "--device", "cpu", "--json", str(path)])
    assert r.exit_code == 0, r.output
    assert "GPU only" in r.output and "nothing written" in r.output and "wrote" not in r.output
    assert not path.exists()


def test_step_bench_reports_the_wait_on_the_real_dataset(tmp_path):
    from bicycle.bench.step import run_step_bench
    records = run_step_bench("cpu", [2], str(tmp_path / "s.json"), quick=True)
    for rec in records:
        assert 0 <= rec["data_wait_fraction"] < 1 and 0 <= rec["data_fraction"] < 1
        assert rec["prefetch"] == "inline" and rec["dataset"].startswith("aligned folder")


def test_a_failing_measurement_becomes_a_record_and_the_others_still_run(tmp_path, monkeypatch):
    import bicycle.bench.step as step

    real = step.measure_step

    def flaky(mode, *args, **kwargs):
        if mode == "fused-eager":
            raise RuntimeError("simulated failure in one measurement")
        return real(mode, *args, **kwargs)

    monkeypatch.setattr(step, "measure_step", flaky)
    path = tmp_path / "s.json"
    records = step.run_step_bench("cpu", [2], str(path), quick=True, keep_going=True)
    assert [r["mode"] for r in records] == ["eager", "fused-eager"]
    assert "ms_per_iter" in records[0] and "simulated failure" in records[1]["error"]
    assert json.loads(path.read_text())["records"] == records
    with pytest.raises(RuntimeError, match="simulated"):
        step.run_step_bench("cpu", [2], None, quick=True)


def test_data_wait_is_measured_with_the_device_synchronised_after_every_iteration():
    """The GPU waits on data only when the next batch is not ready once the previous step has finished on
    the device: the fraction is the prefetcher wait over the wall time of iterations each followed by a sync."""
    import time

    from bicycle.bench.step import synced_wait_fraction

    events = []

    class Batches:
        wait_s = 5.0  # left over from the unsynchronised block: must not count

        def next(self):
            time.sleep(0.02)  # the batch is late by 20 ms
            self.wait_s += 0.02
            events.append("next")

    batches = Batches()

    def run_iter():
        batches.next()
        time.sleep(0.02)  # the step itself: 20 ms
        events.append("step")

    fraction = synced_wait_fraction(batches, run_iter, 4, sync=lambda: events.append("sync"))
    assert events == ["sync"] + ["next", "step", "sync"] * 4
    assert 0.3 < fraction < 0.55  # 20 ms waited of about 40 ms per iteration
