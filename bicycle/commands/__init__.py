"""Every ``bicycle`` command, one module each, registered here (:data:`COMMANDS`); :mod:`bicycle.cli` assembles
them. Each command is a thin layer over the library, its errors reported by
:func:`bicycle.commands.reporting.reports_errors`."""
from __future__ import annotations

import importlib

import click

# command name -> (module under bicycle.commands, the click command in it)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train"),
    "sample": ("sample", "sample"),
    "eval": ("eval", "evaluate"),
    "plugins": ("plugins", "plugins"),
    "env": ("env", "env"),
    "bench": ("bench", "bench"),
    "export": ("export", "export"),
    "convert-original": ("convert_original", "convert_original"),
    "fit-posterior": ("fit_posterior", "fit_posterior"),
    "demo": ("demo", "demo"),
}


def add_commands(group: click.Group) -> None:
    """Attach every command of :data:`COMMANDS` to ``group``."""
    for name, (module, attr) in COMMANDS.items():
        group.add_command(getattr(importlib.import_module(f"bicycle.commands.{module}"), attr), name)
