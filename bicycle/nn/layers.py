"""Small building blocks shared by the networks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (no affine, no running stats) that keeps a channels_last input channels_last.

    torch's kernel returns an NCHW-contiguous tensor for a channels_last input: a layout conversion at
    every norm of the bf16 (channels_last) step. For such inputs the same maths, (x - mean) / sqrt(var + eps)
    with the biased variance over H x W, is written in elementwise ops, which keep the layout; the
    statistics are computed in float32. Contiguous inputs take torch's kernel unchanged. x: [N, C, H, W].
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            xf = x.float()
            var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
            return ((xf - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        return super().forward(x)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """"instance" (no affine, no running stats, as the reference), "batch" or "none"."""
    if kind == "instance":
        return InstanceNorm(channels, affine=False, track_running_stats=False)
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
