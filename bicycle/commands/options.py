"""``bicycle train``'s config flags, generated from the config's fields (:func:`bicycle.config.key`), grouped in
``--help`` by config section, and ``--set KEY=VALUE`` for any key."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import click

from bicycle.config import WEIGHTS, config_fields, parse_value
from bicycle.errors import ConfigError

RUN_GROUP = "Run"
SECTION_TITLES = {"data": "Data", "train": "Training", "net": "Networks", "loss": "Loss weights",
                  "optim": "Optimizer"}
_TYPES = {"int": click.INT, "float": click.FLOAT}


weights_option = click.option(
    "--weights", type=click.Choice(WEIGHTS), default="auto", show_default=True,
    help="which weights translate: the moving average of G and E when the run kept one (auto), only it (ema), or "
         "the weights as trained (raw)")


class ConfigOption(click.Option):
    """A flag that sets config key ``key``; ``group``: its section in ``--help``."""

    def __init__(self, decls: Sequence[str], *, key: str | None = None, group: str = RUN_GROUP, **attrs: Any) -> None:
        super().__init__(decls, **attrs)
        self.key, self.group = key, group


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists its options under their groups' titles."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record is not None:
                groups.setdefault(getattr(p, "group", RUN_GROUP), []).append(record)
        for title, rows in groups.items():
            with formatter.section(title):
                formatter.write_dl(rows)


def config_options() -> list[ConfigOption]:
    """One flag per settable config key, grouped by section (the Training section first: the model)."""
    options = []
    for name, f in config_fields():
        meta = f.metadata
        if meta["derived"]:
            continue
        section, _, field_name = name.partition(".")
        param = meta["flag"] or field_name
        dash = param.replace("_", "-")
        kind = str(f.type).split("|")[0].strip()
        attrs: dict[str, Any] = {"help": meta["help"], "key": name, "group": SECTION_TITLES[section]}
        if kind == "bool":
            options.append(ConfigOption([f"--{dash}/--no-{dash}", param], default=None, **attrs))
            continue
        if meta["choices"] is not None:
            attrs["type"] = click.Choice(list(meta["choices"]))
        elif kind in _TYPES:
            attrs["type"] = _TYPES[kind]
        options.append(ConfigOption([f"--{dash}", param], **attrs))
    order = list(SECTION_TITLES.values())
    return sorted(options, key=lambda o: order.index(o.group))


def flag_keys(params: Iterable[click.Parameter]) -> dict[str, str]:
    """{parameter name: config key} of the config flags among ``params``."""
    return {p.name: p.key for p in params if isinstance(p, ConfigOption) and p.key and p.name}


def requested_values(flags: dict[str, Any], keys: dict[str, str], settings: Sequence[str]) -> dict[str, Any]:
    """{config key: value} from the config flags given (not None) and the ``--set KEY=VALUE`` settings (a value may
    be None: ``--set optim.lr_d=none``). A flag and a setting, or two settings, that disagree are a ConfigError."""
    values = {keys[k]: v for k, v in flags.items() if v is not None}
    said = {keys[k]: f"--{k.replace('_', '-')} {v}" for k, v in flags.items() if v is not None}
    for item in settings:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set {item}: give KEY=VALUE, e.g. --set optim.beta1=0.9")
        value = parse_value(name, text)
        if name in values and values[name] != value:
            raise ConfigError(f"{said[name]} and --set {item} disagree: give {name} once")
        values[name], said[name] = value, f"--set {item}"
    return values
