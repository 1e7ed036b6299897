"""Shared helpers for the op tests (a plain module, not a conftest: ``tests/conftest.py`` is not ours).

Triton decides at import time of the kernel modules whether kernels are interpreted, so on a machine
without CUDA ``TRITON_INTERPRET=1`` must be set before anything imports ``bicycle.ops``:
:func:`use_triton_interpreter_without_cuda` does that and is called at the top of each op test module
(``tests/conftest.py`` should call it too, before other test modules import bicycle.ops).
"""
from __future__ import annotations

import os


def use_triton_interpreter_without_cuda() -> None:
    """Set TRITON_INTERPRET=1 unless a CUDA device is present (where the kernels should really compile)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def triton_required() -> bool:
    """CI sets BICYCLE_REQUIRE_TRITON=1: then the Triton tests must run, and fail rather than skip."""
    return os.environ.get("BICYCLE_REQUIRE_TRITON", "0") not in ("", "0")
