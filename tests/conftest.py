"""Shared fixtures. Kernel tests run Triton under the interpreter on CPU-only machines."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_plugins(monkeypatch):
    """Every test starts from a fresh plugin set without third-party autoloading."""
    from bicycle import plugins

    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    plugins.set_plugins(None)
    yield
    plugins.set_plugins(None)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
