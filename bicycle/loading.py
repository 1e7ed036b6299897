"""Trained models for inference: networks rebuilt from a checkpoint's own config, no training code."""
from __future__ import annotations

from pathlib import Path

import torch

from bicycle import io
from bicycle.build import build_networks, pick_device
from bicycle.nets import Nets
from bicycle.plugins import get_plugins


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[io.Checkpoint, Nets, torch.device]:
    """Networks rebuilt from the checkpoint's own config, weights loaded strictly, in eval mode."""
    ckpt = io.load_checkpoint(checkpoint)
    dev = pick_device(device)
    nets = build_networks(ckpt.config, get_plugins().registry)
    io.load_networks(ckpt, nets)
    for _, m in nets.items():
        m.to(dev).eval()
    return ckpt, nets, dev
