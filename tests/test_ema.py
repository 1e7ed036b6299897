"""``--ema``: a moving average of G's and E's weights, kept in checkpoints (exact on resume), updated inside the step
(eagerly and under CUDA-graph replay), and used by sampling, eval, export and the Python API."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import bicycle
from bicycle.cli import main
from bicycle.errors import CheckpointError
from bicycle.train.ema import WeightAverage, decay_at
from bicycle.train.graph import GraphedStep
from tiny import tiny_state

TINY = ["--image-size", "32", "--batch-size", "4", "--ngf", "8", "--nef", "8", "--ndf", "8", "--device", "cpu",
        "--impl", "ref", "--checkpoint-every", "6", "--sample-every", "6", "--log-every", "6"]


def _cli(*args: str):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return r


def _state(**over):
    return tiny_state("cpu", **over)


def test_the_warm_up_follows_the_live_weights_early_and_the_decay_later():
    assert decay_at(0.999, 0) == pytest.approx(0.1)
    assert decay_at(0.999, 90) == pytest.approx(0.91)
    assert decay_at(0.999, 100_000) == 0.999
    with pytest.raises(ValueError):
        WeightAverage(_state()[0].nets, 1.0)


def test_one_step_moves_each_average_by_its_weight_towards_the_live_weights():
    state, a, b, cfg = _state(**{"train.ema": 0.9})
    ema = state.ema
    assert ema is not None and state.sampling_nets is ema.nets and set(dict(ema.nets.items())) == {"G", "E"}
    before = {k: v.clone() for k, v in ema.tensors().items()}
    step = GraphedStep(state, tuple(a.shape), tuple(b.shape), cfg.net.nz, "cpu")
    step.set_ema_step(500)
    step.step(a, b)
    w = 1 - 0.9
    live = {f"ema.{n}.{k}": v for n, m in state.nets.items() if n in ("G", "E") for k, v in m.state_dict().items()}
    after = ema.tensors()
    moved = 0
    for k, v in after.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, before[k] + w * (live[k].cpu() - before[k]), rtol=1e-6, atol=1e-7)
            moved += int(not torch.equal(v, before[k]))
    assert moved > 0
    assert not any(p.requires_grad for _, m in ema.nets.items() for p in m.parameters())


def test_without_ema_the_state_samples_with_its_own_networks():
    state, *_ = _state()
    assert state.ema is None and state.sampling_nets is state.nets


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ema") / "run"
    r = _cli("train", "--steps", "12", *TINY, "--ema", "0.9", "--run-dir", str(run))
    assert r.exit_code == 0, r.output
    return run


def _latest(run: Path) -> dict[str, torch.Tensor]:
    return load_file(sorted((run / "checkpoints").glob("step_*.safetensors"))[-1])


def test_checkpoints_keep_the_averages_and_a_resume_continues_them_exactly(ema_run, tmp_path):
    straight = _latest(ema_run)
    averages = [k for k in straight if k.startswith("ema.")]
    assert {k.split(".")[1] for k in averages} == {"G", "E"}
    assert len(averages) == sum(1 for k in straight if k.startswith(("G.", "E.")))
    assert any(not torch.equal(straight[k], straight[k[4:]]) for k in averages)
    resumed = tmp_path / "resumed"
    shutil.copytree(ema_run, resumed)
    (resumed / "checkpoints" / "step_00000012.safetensors").unlink()
    (resumed / "checkpoints" / "latest").write_text("step_00000006.safetensors\n")
    (resumed / "summary.json").unlink()
    r = _cli("train", "--resume", str(resumed))
    assert r.exit_code == 0, r.output
    again = _latest(resumed)
    for k in averages + [k for k in straight if k.startswith(("G.", "E."))]:
        assert torch.equal(again[k], straight[k]), k


def test_sampling_eval_and_the_api_use_the_averages_unless_asked_for_the_raw_weights(ema_run, tmp_path):
    stored = _latest(ema_run)
    model = bicycle.load(ema_run, device="cpu")
    assert model.weights == "ema" and "moving average" in model.weights_note
    for k, v in model.nets.G.state_dict().items():
        assert torch.equal(v.cpu(), stored[f"ema.G.{k}"]), k
    raw = bicycle.load(ema_run, device="cpu", weights="raw")
    assert raw.weights == "raw"
    for k, v in raw.nets.G.state_dict().items():
        assert torch.equal(v.cpu(), stored[f"G.{k}"]), k
    r = _cli("sample", "--checkpoint", str(ema_run), "--out", str(tmp_path / "s"), "--samples", "2", "--inputs", "2",
             "--device", "cpu")
    assert r.exit_code == 0 and "weights: the moving average of G and E (decay 0.9)" in r.output, r.output
    r = _cli("eval", "--checkpoint", str(ema_run), "--inputs", "4", "--samples", "2", "--device", "cpu",
             "--weights", "raw")
    assert r.exit_code == 0 and "weights: as trained (--weights raw" in r.output, r.output


def test_export_writes_the_averages_and_says_so(ema_run, tmp_path):
    out = tmp_path / "w.safetensors"
    r = _cli("export", str(ema_run), "--out", str(out))
    assert r.exit_code == 0 and "ema weights" in r.output, r.output
    exported, stored = load_file(out), _latest(ema_run)
    for k in (k for k in exported if k.startswith("G.")):
        assert torch.equal(exported[k], stored[f"ema.{k}"]), k
    assert bicycle.load(out, device="cpu").weights == "ema"
    with pytest.raises(CheckpointError, match="--weights raw"):
        bicycle.load(out, device="cpu", weights="raw")


def test_a_run_without_averages_uses_its_weights_and_says_so(tmp_path):
    run = tmp_path / "plain"
    assert _cli("train", "--steps", "2", *TINY, "--run-dir", str(run)).exit_code == 0
    model = bicycle.load(run, device="cpu")
    assert model.weights == "raw" and "keeps no moving average" in model.weights_note
    with pytest.raises(CheckpointError, match="without --ema"):
        bicycle.load(run, device="cpu", weights="ema")


@pytest.mark.parametrize("value", ["1.0", "-0.1", "nan"])
def test_a_decay_outside_zero_to_one_is_refused_before_training(value, tmp_path):
    r = _cli("train", "--steps", "2", *TINY, "--ema", value, "--run-dir", str(tmp_path / "r"))
    assert r.exit_code == 2 and "train.ema" in r.output
    assert not (tmp_path / "r").exists()


@pytest.mark.gpu
def test_gpu_the_replayed_step_updates_the_averages_as_the_eager_step():
    """The average's weight is a device tensor refilled before each replay; the update is captured with the step."""
    state, a, b, cfg = tiny_state("cuda", **{"net.image_size": 64, "train.impl": "auto", "train.ema": 0.5})
    g = GraphedStep(state, tuple(a.shape), tuple(b.shape), cfg.net.nz, "cuda", warmup=1)
    for i in range(3):
        g.set_ema_step(i)
        g.step(a, b)
    assert g.captured
    before = {k: v.clone() for k, v in state.ema.tensors().items()}
    live = {f"ema.{n}.{k}": v.detach().cpu() for n, m in state.nets.items() if n in ("G", "E")
            for k, v in m.state_dict().items()}
    g.set_ema_step(10**6)  # weight 1 - 0.5: replays must read the refilled tensor
    g.replay()
    torch.cuda.synchronize()
    live_after = {f"ema.{n}.{k}": v.detach().cpu() for n, m in state.nets.items() if n in ("G", "E")
                  for k, v in m.state_dict().items()}
    for k, v in state.ema.tensors().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, before[k] + 0.5 * (live_after[k] - before[k]), rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(live[k], live_after[k]) for k in live)
