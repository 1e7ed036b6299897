"""The divergence guard: non-finite losses noticed without a host sync, the run stopped with one line and
its own exit code, no non-finite checkpoint ever written or loaded."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import bicycle.train.graph as graph
from bicycle import io
from bicycle.cli import main
from bicycle.errors import CheckpointError, NonFiniteError, TrainingDiverged
from bicycle.train.guard import DivergenceGuard
from bicycle.train.loop import train
from tiny import tiny_config


def test_the_guard_keeps_the_first_non_finite_step_and_its_losses():
    g = DivergenceGuard("cpu", start_step=10)
    one = torch.tensor(1.0)
    g.record({"a": one, "b": one})
    assert g.first_bad() is None
    g.record({"a": torch.tensor(float("nan")), "b": one})
    g.record({"a": one, "b": torch.tensor(float("inf"))})  # later steps do not overwrite the first
    bad = g.first_bad()
    assert bad is not None and bad.step == 12 and list(bad.losses) == ["a"] and math.isnan(bad.losses["a"])
    assert "step 12" in bad.describe() and "a = nan" in bad.describe()
    g.reset(12)
    assert g.first_bad() is None and int(g.steps) == 12


def _poison_at(monkeypatch, call: int, what: str = "weights") -> None:
    """Make the ``call``-th training step non-finite, as a diverging run would."""
    real = graph.train_step
    calls = []

    def step(state, *args, **kwargs):
        calls.append(1)
        if len(calls) == call and what == "weights":
            with torch.no_grad():
                next(state.nets.G.parameters()).fill_(float("nan"))
        out = real(state, *args, **kwargs)
        if len(calls) == call and what == "adam":  # finite losses, non-finite optimizer state
            opt = state.optimizers["D"]
            next(iter(opt.state.values()))["exp_avg"].fill_(float("nan"))
        return out

    monkeypatch.setattr(graph, "train_step", step)


def _tiny(**over):
    return tiny_config(**{"train.steps": 12, "train.checkpoint_every": 2, "train.log_every": 100,
                          "train.sample_every": 100, "train.keep_checkpoints": 2, **over})


def test_a_diverging_run_stops_keeps_its_last_finite_checkpoint_and_writes_no_other(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 5)
    with pytest.raises(TrainingDiverged) as info:
        train(_tiny(), tmp_path / "run", echo=lambda _m: None)
    msg = str(info.value)
    assert "diverged at step 5" in msg and "G_L1 = nan" in msg and "stopped at step 6" in msg
    assert "step_00000004.safetensors" in msg
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.safetensors"))
    assert files == ["step_00000002.safetensors", "step_00000004.safetensors"]  # the newest finite one kept
    ckpt = io.load_checkpoint(tmp_path / "run")
    assert ckpt.step == 4 and not io.nonfinite_tensors(ckpt.tensors)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_finite_losses_with_non_finite_optimizer_state_are_a_divergence_at_the_checkpoint(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 4, what="adam")
    with pytest.raises(TrainingDiverged, match="diverged at step 4: non-finite weights"):
        train(_tiny(), tmp_path / "run", echo=lambda _m: None)
    assert io.load_checkpoint(tmp_path / "run").step == 2


def test_the_cli_says_it_in_one_line_and_exits_with_its_own_code(tmp_path, monkeypatch):
    _poison_at(monkeypatch, 3)
    args = ["train", "--device", "cpu", "--steps", "6", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8",
            "--batch-size", "4", "--log-every", "1", "--checkpoint-every", "2", "--run-dir", str(tmp_path / "run")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == TrainingDiverged.exit_code, r.output
    assert "Traceback" not in r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged at step 3: non-finite loss") and "step_00000002" in last


def _nan_checkpoint(tmp_path) -> str:
    train(_tiny(**{"train.steps": 2}), tmp_path / "run", echo=lambda _m: None)
    path = io.resolve_checkpoint_path(tmp_path / "run")
    tensors, meta = load_file(str(path)), io.load_checkpoint(path).metadata
    tensors[next(k for k in sorted(tensors) if k.startswith("G."))].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    return str(path)


@pytest.mark.parametrize("command", ["sample", "eval", "resume"])
def test_every_loading_path_refuses_non_finite_weights_naming_the_file(tmp_path, monkeypatch, command):
    path = _nan_checkpoint(tmp_path)
    args = {"sample": ["sample", "--checkpoint", path, "--data", "shapes", "--out", str(tmp_path / "o")],
            "eval": ["eval", "--checkpoint", path, "--inputs", "2", "--samples", "2"],
            "resume": ["train", "--resume", str(tmp_path / "run"), "--steps", "4"]}[command]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == CheckpointError.exit_code, r.output
    assert "Traceback" not in r.output and path in r.output and "non-finite" in r.output
    assert not (tmp_path / "o").exists()


def test_saving_non_finite_weights_is_refused(tmp_path):
    from bicycle.build import build_networks, resolve
    from bicycle.plugins import get_plugins
    cfg = resolve(tiny_config(), get_plugins().registry)
    nets = build_networks(cfg, get_plugins().registry)
    with torch.no_grad():
        next(nets.D.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to write"):
        io.save_checkpoint(tmp_path / "c.safetensors", cfg, nets, 1)
    assert not list(tmp_path.iterdir())
