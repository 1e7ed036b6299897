"""Built-in z-injection strategies: z tiled to H x W and concatenated at the input or at every level; and
``all-film``, which also modulates the decoder."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bicycle.hookspecs import hookimpl
from bicycle.nn.layers import init_weights
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


class DecoderFilmInjector(ConcatInjector):
    """``all`` at the encoder points; at each decoder point y [N, C, H, W] -> y * (1 + gamma(z)) + beta(z), with
    [gamma, beta] = Linear(z) [N, 2C] broadcast over H x W (FiLM, Perez et al. 2018).

    Why: a tiled z concatenated before a conv adds a per-channel constant that the instance norm after the conv
    removes, so the decoder would see z only through the spatial patterns of the innermost level; a colour z
    picks for a region G must find itself (outline inputs) has to be rebuilt from those (experiments/generalization/
    README.md, "Where the fill is lost"). The modulation sits after each up block's norm, so no norm undoes it.
    """

    def __init__(self, points: Sequence[InjectionPoint], nz: int) -> None:
        super().__init__(points, nz, frozenset(p.index for p in points if not p.decoder))
        self.film = nn.ModuleDict({str(p.index): nn.Linear(nz, 2 * p.channels) for p in points if p.decoder})
        init_weights(self.film)

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        key = str(index)
        if key not in self.film:
            return super().forward(index, x, z)
        gamma, beta = self.film[key](z).view(x.shape[0], 2, x.shape[1], 1, 1).unbind(1)
        return x * (1 + gamma) + beta


def _input(points: Sequence[InjectionPoint], nz: int) -> ConcatInjector:
    return ConcatInjector(points, nz, frozenset({0}))


def _all(points: Sequence[InjectionPoint], nz: int) -> ConcatInjector:
    return ConcatInjector(points, nz, frozenset(p.index for p in points))


def _all_film(points: Sequence[InjectionPoint], nz: int) -> DecoderFilmInjector:
    return DecoderFilmInjector(points, nz)


@hookimpl
def bicycle_injectors() -> list[InjectorSpec]:
    return [
        InjectorSpec("input", _input, "z concatenated to the generator's input only (G_Unet_add_input)"),
        InjectorSpec("all", _all, "z concatenated to the input of every down-sampling block (G_Unet_add_all)"),
        InjectorSpec("all-film", _all_film, "as 'all', and z scales and shifts the decoder's features at every "
                     "level (FiLM after each up-path norm); needs a backbone with decoder points", decoder=True),
    ]
