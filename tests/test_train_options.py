"""`bicycle train`'s options, generated from the config's fields, keep the names, types, defaults and help they had
before (tests/fixtures/train_options.json, dumped from the hand-written decorators of 4a024e5)."""
from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from bicycle.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "train_options.json"


def describe(p: click.Parameter) -> dict:
    t = p.type
    default = p.default
    if default is not None and not isinstance(default, (bool, int, float, str)):
        default = None  # click's "not set" sentinel
    return {"name": p.name, "opts": list(p.opts), "secondary_opts": list(p.secondary_opts), "type": t.name,
            "choices": list(t.choices) if isinstance(t, click.Choice) else None, "default": default,
            "help": getattr(p, "help", None), "is_flag": bool(getattr(p, "is_flag", False)), "multiple": p.multiple,
            "show_default": getattr(p, "show_default", None)}


def current() -> dict[str, dict]:
    return {p.name: describe(p) for p in main.commands["train"].params}


def test_every_train_option_of_before_keeps_its_name_type_default_and_help():
    before = {d["name"]: d for d in json.loads(FIXTURE.read_text())}
    now = current()
    missing = sorted(set(before) - set(now))
    assert not missing, f"options gone: {missing}"
    def kept(old: dict, new: dict) -> bool:  # a new choice keeps every old command line working
        grown = old["choices"] is not None and new["choices"] is not None and set(old["choices"]) <= set(new["choices"])
        return {**old, "choices": None} == {**new, "choices": None} if grown else old == new
    changed = {k: (before[k], now[k]) for k in before if not kept(before[k], now[k])}
    assert not changed, changed


def _dry(*args: str):
    from click.testing import CliRunner
    r = CliRunner().invoke(main, ["train", "--dry-run", *args], catch_exceptions=False)
    cfg = json.loads(r.output[r.output.index("{"):]) if r.exit_code == 0 else None
    return r, cfg


def test_beta_flags_and_set_reach_keys_without_a_flag_of_their_own():
    r, cfg = _dry("--beta1", "0.9", "--set", "optim.beta2=0.99", "--set", "data.flip=false", "--set", "optim.lr_d=none",
                  "--set", "train.steps=10")
    assert r.exit_code == 0, r.output
    assert (cfg["optim"]["beta1"], cfg["optim"]["beta2"], cfg["data"]["flip"], cfg["train"]["steps"]) == (0.9, 0.99, False, 10)
    assert cfg["optim"]["lr_d"] is None


def test_a_set_equal_to_its_flag_is_fine():
    r, cfg = _dry("--nz", "4", "--set", "net.nz=4")
    assert r.exit_code == 0 and cfg["net"]["nz"] == 4


def test_a_set_takes_part_in_the_preset_resolution():
    r, cfg = _dry("--set", "net.image_size=128")
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("bicycle train: preset demo, size band 33-128 px")
    assert (cfg["train"]["steps"], cfg["optim"]["lr"]) == (4500, 2e-3)


@pytest.mark.parametrize("args, message", [
    (["--nz", "4", "--set", "net.nz=5"], "--nz 4 and --set net.nz=5 disagree"),
    (["--set", "net.nz=4", "--set", "net.nz=5"], "--set net.nz=4 and --set net.nz=5 disagree"),
    (["--set", "net.nzz=5"], "unknown config key 'net.nzz' (did you mean 'net.nz'?)"),
    (["--set", "net.nz"], "give KEY=VALUE"),
    (["--set", "net.nz=x"], "net.nz takes an integer"),
    (["--set", "data.flip=maybe"], "data.flip takes true or false"),
    (["--set", "net.nz=none"], "net.nz takes an integer"),
    (["--set", "net.in_channels=1"], "bicycle fills this key in itself"),
    (["--set", "net.norm=foo"], "net.norm must be one of instance, batch, none, got 'foo'"),
    (["--set", "optim.beta1=1.5"], "optim.beta1 must be within [0, 1)"),
])
def test_bad_settings_are_usage_errors(args, message):
    r, _ = _dry(*args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_on_resume_set_reaches_only_the_resumable_keys(tmp_path):
    from click.testing import CliRunner
    run = tmp_path / "run"
    tiny = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "2",
            "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "2", "--impl", "ref", "--device", "cpu"]
    assert CliRunner().invoke(main, ["train", *tiny, "--run-dir", str(run)]).exit_code == 0
    r = CliRunner().invoke(main, ["train", "--resume", str(run), "--dry-run", "--set", "train.steps=6",
                                  "--set", "train.log_every=3"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output[r.output.index("{"):])
    assert (cfg["train"]["steps"], cfg["train"]["log_every"]) == (6, 3)
    r = CliRunner().invoke(main, ["train", "--resume", str(run), "--dry-run", "--set", "optim.beta1=0.9"])
    assert r.exit_code == 2 and "optim.beta1 (run: 0.5, requested: 0.9)" in r.output, r.output


def test_help_groups_the_options_by_config_section():
    from click.testing import CliRunner
    out = CliRunner().invoke(main, ["train", "--help"]).output
    titles = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["Run:", "Data:", "Training:", "Networks:", "Loss weights:", "Optimizer:"]
