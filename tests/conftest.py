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


@pytest.fixture(autouse=True, scope="session")
def _session_cache_home(tmp_path_factory):
    """The user cache (the image-check verdicts) never in the real home, module and session fixtures included."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache-session"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def _cache_home(monkeypatch, tmp_path_factory):
    """Each test its own, empty user cache directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
