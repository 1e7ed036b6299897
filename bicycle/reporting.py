"""How every command reports bicycle's errors: one line and the error class's exit code (usage errors exit 2)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import click

from bicycle.errors import EXIT_INTERRUPTED, BicycleError, ConfigError

T = TypeVar("T")


def run_reporting(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``; a ConfigError becomes a usage error, any other BicycleError one line with its
    exit code, Ctrl-C a line and exit 130."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        click.echo("interrupted (Ctrl-C): stopped at once; checkpoints already written are kept", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BicycleError as exc:
        report(exc)


def report(exc: BicycleError) -> NoReturn:
    """``exc`` as the CLI reports it: a ConfigError as a usage error, any other one line and its exit code."""
    if isinstance(exc, ConfigError):
        raise click.UsageError(str(exc)) from exc
    if exc.reported:
        sys.exit(exc.exit_code)
    err = click.ClickException(str(exc))
    err.exit_code = exc.exit_code
    raise err from exc


def announce(exc: BicycleError) -> None:
    """Print ``exc`` now, as the CLI would, and mark it reported (rank 0's verdict, printed before any rank exits)."""
    click.echo(f"Error: {exc}", err=True)
    sys.stderr.flush()
    exc.reported = True
