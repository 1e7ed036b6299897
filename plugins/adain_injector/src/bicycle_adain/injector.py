"""AdaIN-style modulation (Huang & Belongie 2017; as in MUNIT/StyleGAN) from z.

At each modulated point i, with x [N, C, H, W] and z [N, nz]:

    gamma, beta = split(Linear_i(z))                       # [N, C] each
    x' = (1 + gamma) * (x - mean_hw(x)) / sqrt(var_hw(x) + eps) + beta

The channel count is unchanged (``channels_after(i) == channels``), so a backbone's layers do not grow
with nz. The network input (point 0) is left as it is: normalising an image would discard its
contrast, and every later point already sees z.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bicycle.registry import InjectionPoint, Injector

EPS = 1e-5


class AdaINInjector(Injector):
    """Modulates points whose index is in ``where``; others pass through. [N, C, H, W] -> [N, C, H, W]."""

    def __init__(self, points: Sequence[InjectionPoint], nz: int, where: frozenset[int]) -> None:
        super().__init__()
        self._channels = {p.index: p.channels for p in points}
        self.where = frozenset(i for i in where if i in self._channels)
        # One affine map per modulated point, keyed by index (ModuleDict keys must be strings).
        self.affine = nn.ModuleDict({str(p.index): nn.Linear(nz, 2 * p.channels) for p in points if p.index in self.where})

    def channels_after(self, index: int) -> int:
        return self._channels[index]

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        if index not in self.where:
            return x
        n, c = x.shape[:2]
        gamma, beta = self.affine[str(index)](z).view(n, 2, c, 1, 1).unbind(1)
        mean = x.mean(dim=(2, 3), keepdim=True)
        var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        return (1 + gamma) * (x - mean) * (var + EPS).rsqrt() + beta
