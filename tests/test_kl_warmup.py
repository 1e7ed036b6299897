"""lambda_KL warm-up (``loss.kl_warmup``): a linear ramp over the first steps, read from a device tensor."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

import bicycle.train.loop as loop
from bicycle.cli import main
from bicycle.config import PRESETS, ConfigError, RunConfig, replace, validate
from bicycle.io import load_checkpoint
from bicycle.train.schedule import kl_factor
from test_step import make_state
from tiny import spy_kl_scales, tiny_config


def test_kl_factor_ramps_linearly_then_stays_at_one():
    assert [kl_factor(s, 10, 0.0) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]  # the paper: constant
    assert [kl_factor(s, 10, 0.5) for s in range(7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    assert kl_factor(0, 10, 0.05) == 1.0  # a ramp shorter than one step is no ramp


@pytest.mark.parametrize("model", ["bicycle", "cvae-gan"])
def test_the_scale_multiplies_the_kl_term_only(model):
    state, a, b, noise, cfg = make_state(model)
    full = state.model.losses(state.nets, a, b, noise, state.loss_setup)
    scaled_setup = dataclasses.replace(state.loss_setup, kl_scale=torch.tensor(0.25))
    scaled = state.model.losses(state.nets, a, b, noise, scaled_setup)
    torch.testing.assert_close(scaled.metrics["kl"], 0.25 * full.metrics["kl"])
    for k in full.metrics:
        if k != "kl":
            torch.testing.assert_close(scaled.metrics[k], full.metrics[k])
    torch.testing.assert_close(scaled.loss, full.loss - 0.75 * full.metrics["kl"])


def _scales_seen(tmp_path, monkeypatch, cfg: RunConfig | None = None, resume: bool = False, **over) -> list[float | None]:
    seen = spy_kl_scales(monkeypatch)
    loop.train(cfg or tiny_config(**over), tmp_path / "run", resume=resume, echo=lambda _m: None)
    return seen


def test_training_refills_the_scale_before_each_step(tmp_path, monkeypatch):
    seen = _scales_seen(tmp_path, monkeypatch, **{"train.steps": 6, "loss.kl_warmup": 0.5})
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0])


def test_without_warmup_the_objective_has_no_scale(tmp_path, monkeypatch):
    assert _scales_seen(tmp_path, monkeypatch, **{"train.steps": 2, "loss.kl_warmup": 0.0}) == [None, None]


def test_resume_continues_the_ramp(tmp_path, monkeypatch):
    cfg = tiny_config(**{"train.steps": 4, "loss.kl_warmup": 1.0})
    first = spy_kl_scales(monkeypatch, interrupt_after=2)
    assert loop.train(cfg, tmp_path / "run", echo=lambda _m: None).interrupted
    monkeypatch.undo()
    stored = load_checkpoint(tmp_path / "run").config
    assert _scales_seen(tmp_path, monkeypatch, cfg=stored, resume=True) == pytest.approx([3 / 4, 1.0])
    assert first == pytest.approx([1 / 4, 2 / 4])


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_kl_warmup_must_be_a_fraction(value):
    with pytest.raises(ConfigError, match="loss.kl_warmup must be within"):
        validate(replace(PRESETS["demo"], {"loss.kl_warmup": value}))


def test_the_paper_preset_keeps_lambda_kl_constant():
    assert PRESETS["paper"].loss.kl_warmup == 0.0


def test_cli_flag_reaches_the_config():
    r = CliRunner().invoke(main, ["train", "--device", "cpu", "--kl-warmup", "0.25", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert '"kl_warmup": 0.25' in r.output


def test_observers_see_the_ramped_lambda_kl(tmp_path):
    from bicycle import hookimpl, plugins

    seen: list[float] = []

    class Recorder:
        @hookimpl
        def bicycle_train_step(self, step, metrics):
            seen.append(metrics["lambda_kl"])

    cfg = tiny_config(**{"train.steps": 4, "train.log_every": 1, "loss.kl_warmup": 1.0})
    loop.train(cfg, tmp_path / "run", plugins=plugins.build_plugins([Recorder()], autoload=False), echo=lambda _m: None)
    assert seen == pytest.approx([cfg.loss.kl * f for f in (0.25, 0.5, 0.75, 1.0)])
