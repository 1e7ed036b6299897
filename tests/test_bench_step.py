"""bicycle bench --step / --graph-ops / --prep on CPU (tiny: this checks the records, not speed)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from bicycle.bench import bench
from bicycle.benchstep import (REQUIRED_KEYS, SyntheticPairs, paper_op_shapes, reference_step, run_graph_ops_bench,
                               step_config, to_device_images)


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


def test_synthetic_data_and_device_normalisation():
    data = SyntheticPairs(2, 8, "cpu")
    a, b = data.next()
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 8, 8)
    out = torch.empty(2, 3, 8, 8)
    to_device_images(a, out)
    torch.testing.assert_close(out, a.float() / 127.5 - 1.0)


def test_reference_step_trains_every_network():
    from bicycle.benchstep import _build
    cfg, nets, opts = _build(step_config("cpu", 2, quick=True), "cpu", capturable=False)
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
    from bicycle.benchstep import _build
    from bicycle.models import MODELS, Objective
    from bicycle.train.step import TrainState, train_step

    cfg0 = step_config("cpu", 4, quick=True)
    cfg, n1, o1 = _build(cfg0, "cpu", capturable=False)
    _, n2, o2 = _build(cfg0, "cpu", capturable=False)
    a, b = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(5)
    ref = reference_step(n1, o1, a, b, cfg.net.nz, cfg.loss)
    torch.manual_seed(5)
    noise = {"eps": torch.randn(2, cfg.net.nz), "z": torch.randn(2, cfg.net.nz)}
    got = train_step(TrainState(n2, o2, MODELS["bicycle"], Objective(cfg.loss, cfg.net.gan_mode, "ref")), a, b, noise)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    # Adam's first step moves each weight by about lr * g / (|g| + eps): where a gradient is at rounding
    # level (~eps; the two sum their backward passes in a different order) the moves differ by a fraction of lr.
    lr = cfg.optim.lr
    for k, m in n1.items():
        for p, q in zip(m.parameters(), getattr(n2, k).parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=0.2 * lr)
