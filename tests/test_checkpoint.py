"""Run dir and weights: safetensors only, config inside, strict loading, atomic writes, exact resume."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bicycle import io
from bicycle.errors import CheckpointError, ConfigError
from bicycle.plugins import get_plugins
from bicycle.build import build_networks, resolve
from bicycle.train.loop import train
from tiny import spy_kl_scales, tiny_config


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    from bicycle import plugins
    plugins.set_plugins(None)
    result = train(tiny_config(), run, echo=_quiet)
    return run, result


def test_run_dir_layout(trained):
    run, result = trained
    assert result.step == 4 and not result.interrupted
    assert json.loads((run / "config.json").read_text())["net"]["image_size"] == 32
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000004.safetensors"
    assert sorted(p.name for p in (run / "checkpoints").glob("*.safetensors")) == [
        "step_00000002.safetensors", "step_00000004.safetensors"]
    assert (run / "samples" / "step_00000002.png").is_file() and (run / "samples" / "final.png").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples_per_input"] == 20 and len(summary["modes_per_input"]) == 8
    assert not list(run.rglob("*.tmp")), "no temporary files are left behind"


def test_checkpoint_holds_everything_needed_to_resume(trained):
    run, _ = trained
    ckpt = io.load_checkpoint(run)  # a run dir means its latest checkpoint
    keys = set(ckpt.tensors)
    for prefix in ("G.", "E.", "D.", "D2.", "opt.G.", "opt.E.", "opt.D.", "opt.D2."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert "rng.torch" in keys
    assert ckpt.step == 4 and ckpt.config.train.model == "bicycle"
    assert {"data_epoch", "data_offset"} <= set(ckpt.metadata)


def test_config_travels_with_the_weights(trained):
    run, _ = trained
    ckpt = io.load_checkpoint(run / "checkpoints" / "step_00000004.safetensors")
    nets = build_networks(ckpt.config, get_plugins().registry)
    io.load_networks(ckpt, nets)
    assert torch.equal(nets.G.state_dict()["downs.0.0.weight"], ckpt.tensors["G.downs.0.0.weight"])


def test_missing_and_unexpected_tensors_are_named(trained, tmp_path):
    run, _ = trained
    src = io.resolve_checkpoint_path(run)
    tensors = load_file(str(src))
    meta = {k: v for k, v in io.load_checkpoint(src).metadata.items() if k != "digests"}  # a file of before digests
    del tensors["G.downs.0.0.weight"]
    tensors["G.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    ckpt = io.load_checkpoint(bad)
    nets = build_networks(ckpt.config, get_plugins().registry)
    with pytest.raises(CheckpointError, match=r"missing tensors: G\.downs\.0\.0\.weight.*unexpected tensors: G\.extra\.weight"):
        io.load_networks(ckpt, nets)


def test_config_that_does_not_match_its_tensors_is_named(trained, tmp_path):
    run, _ = trained
    src = io.resolve_checkpoint_path(run)
    meta = dict(io.load_checkpoint(src).metadata)
    cfg = json.loads(meta["config"])
    cfg["net"]["ngf"] = 16
    meta["config"] = json.dumps(cfg)
    bad = tmp_path / "mismatch.safetensors"
    save_file(load_file(str(src)), str(bad), metadata=meta)
    ckpt = io.load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="shape mismatch.*G.downs.0.0.weight"):
        io.load_networks(ckpt, build_networks(ckpt.config, get_plugins().registry))


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        io.load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        io.load_checkpoint(tmp_path)


def test_a_failed_write_never_replaces_a_good_checkpoint(trained, tmp_path, monkeypatch):
    run, _ = trained
    good = tmp_path / "ckpt.safetensors"
    good.write_bytes(io.resolve_checkpoint_path(run).read_bytes())
    before = good.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", explode)
    ckpt = io.load_checkpoint(good)
    nets = build_networks(ckpt.config, get_plugins().registry)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(good, ckpt.config, nets, 5)
    assert good.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_is_exact(tmp_path, monkeypatch):
    """Ctrl-C after step 2 of 4, then --resume: the same weights and optimizer states, bit for bit, as 4 steps
    straight (the LR schedule and lambda_KL's warm-up are functions of the step, data order is checkpointed)."""
    cfg = tiny_config(**{"train.steps": 4, "loss.kl_warmup": 1.0, "optim.decay_start": 0.25})
    straight = train(cfg, tmp_path / "a", echo=_quiet)
    seen = spy_kl_scales(monkeypatch, interrupt_after=2)
    stopped = train(cfg, tmp_path / "b", echo=_quiet)
    assert stopped.interrupted and stopped.step == 2 and io.load_checkpoint(tmp_path / "b").step == 2
    monkeypatch.undo()
    resumed = train(io.load_checkpoint(tmp_path / "b").config, tmp_path / "b", resume=True, echo=_quiet)
    assert seen == [0.25, 0.5] and straight.step == resumed.step == 4
    one, two = io.load_checkpoint(tmp_path / "a"), io.load_checkpoint(tmp_path / "b")
    for k, v in one.tensors.items():
        if not k.startswith("rng."):
            torch.testing.assert_close(two.tensors[k], v, rtol=0, atol=0, msg=k)


def test_resume_may_change_only_steps_and_logging(trained):
    from bicycle.config import replace
    from bicycle.commands.preflight import resume_config
    stored = io.load_checkpoint(trained[0]).config
    ok = resume_config(stored, replace(stored, {"train.steps": 10, "train.log_every": 1}), {"train.steps", "train.log_every"})
    assert ok.train.steps == 10
    other = stored.net.nz + 1
    with pytest.raises(ConfigError, match=rf"net\.nz \(run: {stored.net.nz}, requested: {other}\)"):
        resume_config(stored, replace(stored, {"net.nz": other}), {"net.nz"})


def test_unet256_implies_256_only_through_the_cli_and_resolve_checks_sizes():
    cfg = resolve(tiny_config(**{"net.backbone": "unet256", "net.image_size": 256}), get_plugins().registry)
    assert cfg.net.image_size == 256
