"""Helpers shared by the op files: the guarded Triton import, launch sizing, the C++ buffer hand-off."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

try:  # Triton is optional: the references and the C++ ops work without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

HAS_TRITON: bool = triton is not None
TRITON_VERSION: str | None = getattr(triton, "__version__", None)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def block_size(n: int, device: torch.device, gpu_block: int) -> int:
    """Elements per program. The interpreter costs ~5 ms per program, so it gets one big block."""
    if device.type == "cuda":
        return gpu_block
    return max(16, min(triton.next_power_of_2(max(n, 1)), 1 << 16))


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The promoted dtype of the inputs, as the reference would compute it."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """A scalar loss's dtype: float64 for float64 inputs, else float32 (as autocast computes the reference's
    sums and MSE losses in float32 for bf16/fp16 inputs)."""
    return torch.promote_types(dtype, torch.float32)


def cpu_buffer(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached, C-contiguous CPU tensor of ``dtype`` whose ``.numpy()`` the extension can read."""
    return t.detach().to(dtype).contiguous()


def cpp_float_dtype(dtype: torch.dtype) -> torch.dtype:
    """The C++ ops run in float32 or float64; other floating dtypes are computed in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def kernels_interpreted(kernel: Any) -> bool:
    """Whether a @triton.jit kernel was built for the interpreter (TRITON_INTERPRET=1 at import time)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(kernel, InterpretedFunction)
