"""``bicycle export --out``: inference weights (G, E and the config) as one safetensors file."""
from __future__ import annotations

from pathlib import Path

import torch

from bicycle import io
from bicycle.inference.loading import load_model, pick_weights

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_weights(run: str | Path, out: Path, dtype: str = "fp32", weights: str = "auto") -> dict:
    """Write ``out`` from a run dir / checkpoint / exported file; returns sizes (bytes) of both files. ``weights``:
    which of the checkpoint's weights (:func:`~bicycle.inference.loading.pick_weights`)."""
    from bicycle.inference.posterior import current_posterior, embedded_posterior, embedded_tensors, run_dir_of

    ckpt, nets, _ = load_model(run, "cpu", weights)
    chosen = pick_weights(ckpt, weights)
    if ckpt.weights_only:
        mixture = embedded_posterior(ckpt.tensors, ckpt.path)
    else:  # the run's posterior, when one is fitted for this step (a stale one is an error naming the refit)
        mixture = current_posterior(run_dir_of(ckpt.path), ckpt.step, ckpt.config.net.nz)
    extra = embedded_tensors(mixture) if mixture is not None else None
    with io.writing(out):
        io.save_weights(out, ckpt.config, nets, ckpt.step, DTYPES[dtype], source=f"{ckpt.path.name} (step {ckpt.step})",
                        extra=extra, weights=chosen)
    return {"path": str(out), "bytes": out.stat().st_size, "dtype": dtype, "step": ckpt.step, "weights": chosen,
            "source": str(ckpt.path), "source_bytes": ckpt.size,
            "posterior_components": mixture.k if mixture is not None else None}
