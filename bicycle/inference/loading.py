"""Trained models for inference: networks rebuilt from a checkpoint's own config, no training code."""
from __future__ import annotations

from pathlib import Path

import torch

from bicycle import io
from bicycle.build import build_networks
from bicycle.config import WEIGHTS
from bicycle.errors import CheckpointError, ConfigError
from bicycle.nets import Nets
from bicycle.ops import pick_device
from bicycle.plugins import get_plugins



def pick_weights(ckpt: io.Checkpoint, weights: str = "auto") -> str:
    """``"ema"`` or ``"raw"``: which of ``ckpt``'s weights ``weights`` names; asking for what it lacks is an error."""
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if ckpt.weights_only:
        have = ckpt.metadata.get(io.EXPORTED_WEIGHTS, "raw")
        if weights not in ("auto", have):
            raise CheckpointError(f"{ckpt.path} holds the exported {have} weights only; export the run again with "
                                  f"--weights {weights}")
        return have
    if weights == "ema" and not io.has_average(ckpt):
        raise CheckpointError(f"{ckpt.path} keeps no moving average of the weights (trained without --ema)")
    return "ema" if weights != "raw" and io.has_average(ckpt) else "raw"


def describe_weights(ckpt: io.Checkpoint, chosen: str) -> str:
    """One line for the user: which weights translate."""
    if chosen == "ema":
        decay = ckpt.config.train.ema
        return "weights: the moving average of G and E" + (f" (decay {decay:g})" if decay else "")
    if ckpt.weights_only or not ckpt.config.train.ema:
        return "weights: as trained (this checkpoint keeps no moving average)"
    return "weights: as trained (--weights raw; the checkpoint also keeps the moving average)"


def load_model(checkpoint: str | Path, device: str = "auto",
               weights: str = "auto") -> tuple[io.Checkpoint, Nets, torch.device]:
    """G and E rebuilt from the checkpoint's own config (a run dir, a checkpoint or exported weights), weights
    loaded strictly (float32 whatever the file's dtype), in eval mode on ``device``. ``weights``: see
    :data:`WEIGHTS` and :func:`pick_weights`."""
    ckpt = io.load_checkpoint(checkpoint)
    chosen = pick_weights(ckpt, weights)
    dev = pick_device(device)
    nets = build_networks(ckpt.config, get_plugins().registry, inference=True)
    if chosen == "ema" and not ckpt.weights_only:
        io.load_average(ckpt, nets)
    else:
        io.load_networks(ckpt, nets)
    for _, m in nets.items():
        m.to(dev).eval()
    return ckpt, nets, dev
