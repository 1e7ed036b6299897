"""``bicycle export --out``: inference weights (G, E and the config) as one safetensors file."""
from __future__ import annotations

from pathlib import Path

import torch

from bicycle import io
from bicycle.loading import load_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_weights(run: str | Path, out: Path, dtype: str = "fp32") -> dict:
    """Write ``out`` from a run dir / checkpoint / exported file; returns sizes (bytes) of both files."""
    ckpt, nets, _ = load_model(run, "cpu")
    with io.writing(out):
        io.save_weights(out, ckpt.config, nets, ckpt.step, DTYPES[dtype], source=f"{ckpt.path.name} (step {ckpt.step})")
    return {"path": str(out), "bytes": out.stat().st_size, "dtype": dtype, "step": ckpt.step,
            "source": str(ckpt.path), "source_bytes": ckpt.path.stat().st_size}
