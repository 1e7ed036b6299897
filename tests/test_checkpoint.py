"""Run dir and weights: safetensors only, config inside, strict loading, atomic writes, exact resume."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bicycle import io
from bicycle.errors import CheckpointError, ConfigError
from bicycle.plugins import get_plugins
from bicycle.train.build import build_networks, resolve
from bicycle.train.loop import train
from tiny import tiny_config


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
    meta = io.load_checkpoint(src).metadata
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


def test_resume_is_exact(tmp_path):
    straight = train(tiny_config(**{"train.steps": 4}), tmp_path / "a", echo=_quiet)
    train(tiny_config(**{"train.steps": 2}), tmp_path / "b", echo=_quiet)
    from bicycle.config import replace
    resumed = train(replace(io.load_checkpoint(tmp_path / "b").config, {"train.steps": 4}), tmp_path / "b",
                    resume=True, echo=_quiet)
    assert straight.step == resumed.step == 4
    one, two = io.load_checkpoint(tmp_path / "a"), io.load_checkpoint(tmp_path / "b")
    for k, v in one.tensors.items():
        if not k.startswith("rng."):
            torch.testing.assert_close(two.tensors[k], v, rtol=0, atol=0, msg=k)


def test_resume_may_change_only_steps_and_logging(trained):
    from bicycle.config import replace
    from bicycle.train.loop import resume_config
    stored = io.load_checkpoint(trained[0]).config
    ok = resume_config(stored, replace(stored, {"train.steps": 10, "train.log_every": 1}), {"train.steps", "train.log_every"})
    assert ok.train.steps == 10
    with pytest.raises(ConfigError, match=r"net\.nz \(run: 8, requested: 4\)"):
        resume_config(stored, replace(stored, {"net.nz": 4}), {"net.nz"})


def test_unet256_implies_256_only_through_the_cli_and_resolve_checks_sizes():
    cfg = resolve(tiny_config(**{"net.backbone": "unet256", "net.image_size": 256}), get_plugins().registry)
    assert cfg.net.image_size == 256
