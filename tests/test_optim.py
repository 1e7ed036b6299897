"""Learning rates: one schedule for every network, the discriminators' own base LR when ``optim.lr_d`` is set."""
from __future__ import annotations

import dataclasses
import json

import pytest

from bicycle import io
from bicycle.config import ConfigError, PRESETS, replace, validate
from bicycle.plugins import get_plugins
from bicycle.build import build_networks, resolve
from bicycle.train.schedule import lr_factor
from bicycle.train.state import base_lrs, build_optimizers
from bicycle.train.loop import train
from tiny import tiny_config


def _group_lrs(ckpt: io.Checkpoint) -> dict[str, float]:
    return {name: json.loads(ckpt.metadata[f"opt.{name}.param_groups"])[0]["lr"] for name in ("G", "E", "D", "D2")}


def test_lr_d_sets_the_discriminators_lr_only():
    cfg = resolve(tiny_config(**{"optim.lr": 1e-3, "optim.lr_d": 3e-3}), get_plugins().registry)
    opts = build_optimizers(cfg, build_networks(cfg, get_plugins().registry))
    assert {k: o.param_groups[0]["lr"] for k, o in opts.items()} == {"G": 1e-3, "E": 1e-3, "D": 3e-3, "D2": 3e-3}
    paper_like = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr_d=None))
    assert base_lrs(paper_like, ["G", "D"]) == {"G": 1e-3, "D": 1e-3}  # the paper: one LR for all
    assert PRESETS["paper"].optim.lr_d is None


def test_the_schedule_scales_both_lrs(tmp_path):
    cfg = tiny_config(**{"optim.lr": 1e-3, "optim.lr_d": 3e-3, "optim.decay_start": 0.0, "train.steps": 2,
                         "train.checkpoint_every": 1})
    train(cfg, tmp_path / "run", echo=lambda _m: None)
    last = lr_factor(1, 2, 0.0)  # the factor of the last step
    assert last == pytest.approx(0.5)
    lrs = _group_lrs(io.load_checkpoint(tmp_path / "run"))
    assert lrs == pytest.approx({"G": 1e-3 * last, "E": 1e-3 * last, "D": 3e-3 * last, "D2": 3e-3 * last})


@pytest.mark.parametrize("value", [0.0, -1e-3])
def test_lr_d_must_be_positive(value):
    with pytest.raises(ConfigError, match="optim.lr_d must be positive"):
        validate(replace(PRESETS["demo"], {"optim.lr_d": value}))


def test_resume_keeps_this_devices_adam_implementation(tmp_path):
    """A checkpoint stores the optimizer's groups; the implementation flags must follow the device
    that resumes it (capturable on CUDA, fused on a CPU), not the one that wrote it."""
    cfg = tiny_config(**{"train.steps": 1, "train.checkpoint_every": 1})
    train(cfg, tmp_path / "run", echo=lambda _m: None)
    ckpt = io.load_checkpoint(tmp_path / "run")
    groups = json.loads(ckpt.metadata["opt.G.param_groups"])
    assert groups[0]["fused"] is True and not groups[0]["capturable"]
    for g in groups:  # as if it had been written by a CUDA run
        g.update(fused=None, capturable=True)
    ckpt.metadata["opt.G.param_groups"] = json.dumps(groups)
    resolved = resolve(ckpt.config, get_plugins().registry)
    opts = build_optimizers(resolved, build_networks(resolved, get_plugins().registry))
    io.load_optimizers(ckpt, opts)
    assert opts["G"].param_groups[0]["fused"] is True and not opts["G"].param_groups[0]["capturable"]
    assert opts["G"].state  # the moments were loaded
