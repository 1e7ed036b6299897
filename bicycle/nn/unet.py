"""U-Net generator with pluggable z injection (BicycleGAN's G_Unet_add_input / G_Unet_add_all).

Level i (0 = outermost) down-samples by 2 with a 4x4 stride-2 conv from ``in_ch(i)`` to
``out_ch(i) = ngf * min(2**i, 8)`` channels; the up path mirrors it and concatenates the skip.
The injector decides what enters each down conv and, when it asks for decoder points, what each up block's
output (levels depth-1..1, before the skip joins it) passes on (see :mod:`bicycle.registry`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bicycle.nn.layers import init_weights, norm_layer
from bicycle.registry import GeneratorArgs, InjectionPoint, InjectorSpec


def _upsample(kind: str, cin: int, cout: int) -> list[nn.Module]:
    """x2 up-sampling: a 4x4 stride-2 transposed conv ("basic"), or a resize-convolution ("bilinear", "nearest":
    resize, reflection pad, 3x3 conv), which has no uneven overlap and so no checkerboard (Odena et al., 2016)."""
    if kind == "basic":
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
    if kind in ("bilinear", "nearest"):
        resize = nn.Upsample(scale_factor=2, mode=kind, **({"align_corners": False} if kind == "bilinear" else {}))
        return [resize, nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, 1, 0)]
    raise ValueError(f"unknown upsample {kind!r}")


class UNetGenerator(nn.Module):
    """G(A, z): A [N, in, S, S], z [N, nz] -> B [N, out, S, S] in [-1, 1], with ``depth`` levels.

    ``args.refine`` > 0: the outermost up block ends in a full-resolution block (its up-sampling to ``refine``
    channels, ReLU, 3x3 conv to the output) instead of up-sampling straight to the output.
    Dropout (p=0.5) is applied, when enabled, after the up convs of the 8*ngf levels 4..depth-2,
    as in the reference. The innermost level has no norm on its down path (its output may be 1x1).
    """

    def __init__(self, args: GeneratorArgs, injector: InjectorSpec, depth: int) -> None:
        super().__init__()
        s, ngf = args.image_size, args.ngf
        if s % (2**depth):
            raise ValueError(f"image size {s} is not divisible by 2**{depth}")
        self.depth = depth
        out_ch = [ngf * min(2**i, 8) for i in range(depth)]
        in_ch = [args.in_channels] + out_ch[:-1]
        points = [InjectionPoint(i, in_ch[i], s >> i, s >> i) for i in range(depth)]
        # Decoder point of level i (depth-1..1): ups[i]'s output, [in_ch(i), S/2^i, S/2^i], in forward order.
        self.decoder_point = {i: depth + k for k, i in enumerate(range(depth - 1, 0, -1))} if injector.decoder else {}
        points += [InjectionPoint(j, in_ch[i], s >> i, s >> i, decoder=True) for i, j in self.decoder_point.items()]
        self.injector = injector.build(points, args.nz)

        def decoded(i: int) -> int:
            return self.injector.channels_after(self.decoder_point[i]) if i in self.decoder_point else in_ch[i]
        downs, ups = [], []
        for i in range(depth):
            innermost, outermost = i == depth - 1, i == 0
            down: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2)]
            down.append(nn.Conv2d(self.injector.channels_after(i), out_ch[i], 4, 2, 1))
            if not (outermost or innermost):
                down.append(norm_layer(args.norm, out_ch[i]))
            downs.append(nn.Sequential(*down))
            up_in = out_ch[i] if innermost else decoded(i + 1) + out_ch[i]
            up: list[nn.Module] = [nn.ReLU()]
            if outermost:
                up += _upsample(args.upsample, up_in, args.refine or args.out_channels)
                if args.refine:  # no norm here: an instance norm would take away the absolute colour the output needs
                    up += [nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(args.refine, args.out_channels, 3)]
                up.append(nn.Tanh())
            else:
                up += _upsample(args.upsample, up_in, in_ch[i]) + [norm_layer(args.norm, in_ch[i])]
                if args.dropout and 4 <= i <= depth - 2:
                    up.append(nn.Dropout(0.5))
            ups.append(nn.Sequential(*up))
        self.downs = nn.ModuleList(downs)
        self.ups = nn.ModuleList(ups)
        init_weights(self)

    def forward(self, a: Tensor, z: Tensor) -> Tensor:
        skips = []
        x = a
        for i, down in enumerate(self.downs):
            skips.append(x)
            x = down(self.injector(i, x, z))
        for i in range(self.depth - 1, -1, -1):
            x = self.ups[i](x)
            if i in self.decoder_point:
                x = self.injector(self.decoder_point[i], x, z)
            if i > 0:
                x = torch.cat([x, skips[i]], 1)
        return x
