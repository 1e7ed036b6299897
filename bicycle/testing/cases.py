"""What the generator checks run on: a backbone + injector pair at a small size, built reproducibly."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bicycle.registry import BackboneSpec, GeneratorArgs, InjectorSpec


def tiny_generator_args(in_channels: int = 1, out_channels: int = 3, nz: int = 8, image_size: int = 32,
                        ngf: int = 8, norm: str = "instance", upsample: str = "basic") -> GeneratorArgs:
    """Small GeneratorArgs for fast CPU checks (no dropout, so that train-mode outputs are deterministic)."""
    return GeneratorArgs(in_channels, out_channels, nz, image_size, ngf, norm, upsample, dropout=False)


@dataclass(frozen=True)
class GeneratorCase:
    """A generator to check: ``backbone.build(args, injector)``, fed batches of ``batch`` pairs."""

    backbone: BackboneSpec
    injector: InjectorSpec
    args: GeneratorArgs
    batch: int = 2

    @property
    def subject(self) -> str:
        return f"backbone {self.backbone.name!r} + injector {self.injector.name!r} at {self.args.image_size} px"

    def build(self, seed: int = 0, injector: InjectorSpec | None = None) -> nn.Module:
        """The generator initialised under ``seed``, without touching the caller's global RNG state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.backbone.build(self.args, injector or self.injector)

    def inputs(self, seed: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
        """(A [N, in, S, S] in [-1, 1], z [N, nz] ~ N(0, 1)) drawn from a private generator."""
        g = torch.Generator().manual_seed(seed)
        a = torch.rand(self.batch, self.args.in_channels, self.args.image_size, self.args.image_size, generator=g) * 2 - 1
        z = torch.randn(self.batch, self.args.nz, generator=g)
        return a.to(device), z.to(device)

    def expected_shape(self) -> tuple[int, int, int, int]:
        s = self.args.image_size
        return (self.batch, self.args.out_channels, s, s)
