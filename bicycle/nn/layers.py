"""Small building blocks shared by the networks."""
from __future__ import annotations

import math

from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """"instance" (no affine, no running stats, as the reference), "batch" or "none"."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Xavier-normal init with gain 0.02 for conv/linear weights, zero biases; BatchNorm ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


def two_adic(n: int) -> int:
    """Largest d with 2**d dividing n (n > 0)."""
    return (n & -n).bit_length() - 1


def floor_log2(n: int) -> int:
    return int(math.floor(math.log2(n)))
