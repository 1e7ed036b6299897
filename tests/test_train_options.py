"""`bicycle train`'s options, generated from the config's fields, keep the names, types, defaults and help they had
before (tests/fixtures/train_options.json, dumped from the hand-written decorators of 4a024e5)."""
from __future__ import annotations

import json
from pathlib import Path

import click

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
    changed = {k: (before[k], now[k]) for k in before if before[k] != now[k]}
    assert not changed, changed


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(list(current().values()), indent=1) + "\n")
