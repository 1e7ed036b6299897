"""Trained models for inference: networks rebuilt from a checkpoint's own config, no training code."""
from __future__ import annotations

from pathlib import Path

import torch

from bicycle import io
from bicycle.build import build_networks
from bicycle.ops import pick_device
from bicycle.nets import Nets
from bicycle.plugins import get_plugins


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[io.Checkpoint, Nets, torch.device]:
    """G and E rebuilt from the checkpoint's own config (a run dir, a checkpoint or exported weights), weights
    loaded strictly (float32 whatever the file's dtype), in eval mode on ``device``."""
    ckpt = io.load_checkpoint(checkpoint)
    dev = pick_device(device)
    nets = build_networks(ckpt.config, get_plugins().registry, inference=True)
    io.load_networks(ckpt, nets)
    for _, m in nets.items():
        m.to(dev).eval()
    return ckpt, nets, dev
