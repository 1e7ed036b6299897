"""How every command reports bicycle's errors: one line and the error class's exit code (usage errors exit 2)."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, ParamSpec, TypeVar

import click

from bicycle.errors import EXIT_INTERRUPTED, BicycleError, ConfigError

P = ParamSpec("P")
T = TypeVar("T")


@contextmanager
def reporting() -> Iterator[None]:
    """A ConfigError becomes a usage error, any other BicycleError one line with its exit code, Ctrl-C a line and
    exit 130."""
    try:
        yield
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


def reports_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """A command's body under :func:`reporting` (put it below the click decorators)."""

    @functools.wraps(fn)
    def command(*args: P.args, **kwargs: P.kwargs) -> T:
        with reporting():
            return fn(*args, **kwargs)

    return command
