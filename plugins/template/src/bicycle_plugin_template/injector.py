"""An injector that adds a learned projection of z to every point: x + W_i z (broadcast over H x W).

Keeps the channel count: x [N, C, H, W], z [N, nz] -> [N, C, H, W].
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bicycle.registry import InjectionPoint, Injector


class AddInjector(Injector):
    def __init__(self, points: Sequence[InjectionPoint], nz: int) -> None:
        super().__init__()
        self._channels = {p.index: p.channels for p in points}
        self.proj = nn.ModuleDict({str(p.index): nn.Linear(nz, p.channels) for p in points})

    def channels_after(self, index: int) -> int:
        return self._channels[index]

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        return x + self.proj[str(index)](z)[:, :, None, None]
