"""Built-in z-injection strategies: z tiled to H x W and concatenated at the input or at every level."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bicycle.hookspecs import hookimpl
from bicycle.registry import InjectionPoint, Injector, InjectorSpec


class ConcatInjector(Injector):
    """Concatenates z, tiled to H x W, to the points in ``where`` ([N, C, H, W] -> [N, C + nz, H, W])."""

    def __init__(self, points: Sequence[InjectionPoint], nz: int, where: frozenset[int]) -> None:
        super().__init__()
        self.nz = nz
        self.where = where
        self._channels = {p.index: p.channels + (nz if p.index in where else 0) for p in points}

    def channels_after(self, index: int) -> int:
        return self._channels[index]

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        if index not in self.where:
            return x
        n, _, h, w = x.shape
        return torch.cat([x, z.view(n, self.nz, 1, 1).expand(n, self.nz, h, w)], 1)


def _input(points: Sequence[InjectionPoint], nz: int) -> ConcatInjector:
    return ConcatInjector(points, nz, frozenset({0}))


def _all(points: Sequence[InjectionPoint], nz: int) -> ConcatInjector:
    return ConcatInjector(points, nz, frozenset(p.index for p in points))


@hookimpl
def bicycle_injectors() -> list[InjectorSpec]:
    return [
        InjectorSpec("input", _input, "z concatenated to the generator's input only (G_Unet_add_input)"),
        InjectorSpec("all", _all, "z concatenated to the input of every down-sampling block (G_Unet_add_all)"),
    ]
