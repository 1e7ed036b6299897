"""Tiny configurations for fast CPU tests."""
from __future__ import annotations

from bicycle.config import PRESETS, RunConfig, replace


def tiny_config(**overrides) -> RunConfig:
    base = {"net.image_size": 32, "net.ngf": 8, "net.nef": 8, "net.ndf": 8, "train.batch_size": 4,
            "train.steps": 4, "train.log_every": 2, "train.sample_every": 2, "train.checkpoint_every": 2,
            "net.dropout": False, "train.impl": "ref"}
    base.update(overrides)
    return replace(PRESETS["demo"], base)
