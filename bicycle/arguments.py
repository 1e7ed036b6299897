"""Integer arguments that the CLI and the Python API share, checked by one rule each: seeds and counts.
Python and numpy integers are taken; bools, floats, strings and out-of-range values are a
:class:`~bicycle.errors.ConfigError` naming the argument."""
from __future__ import annotations

import numbers
from typing import Any

from bicycle.errors import ConfigError

MAX_SEED = 2**31 - 1  # the data streams derive per-epoch seeds from it


def _integer(value: Any, name: str, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer {rule}, got {value!r} ({type(value).__name__})")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer within [0, :data:`MAX_SEED`] (the same for ``--seed`` and ``seed=``)."""
    rule = f"within [0, {MAX_SEED}]"
    seed = _integer(value, name, rule)
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name} must be within [0, {MAX_SEED}], got {seed}")
    return seed


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """A count (outputs, frames): an integer of at least ``minimum``."""
    n = _integer(value, name, f"of at least {minimum}")
    if n < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {n}")
    return n
