"""The pix2pix/CycleGAN ResNet generator (Johnson et al.), with z injected through bicycle's contract.

Layout for image size S and width ngf (c7s1-k: 7x7 conv stride 1; dk: 3x3 conv stride 2; Rk: residual
block; uk: stride-1/2 up-sampling):

    c7s1-ngf -> d(2 ngf) -> d(4 ngf) -> n_blocks x R(4 ngf) -> u(2 ngf) -> u(ngf) -> c7s1-out -> tanh

Injection points (inputs of the three encoding blocks, see bicycle.registry):
    0: A          [N, in,    S,   S  ]  consumed by c7s1-ngf
    1: [N, ngf,   S,   S  ]             consumed by d(2 ngf)
    2: [N, 2 ngf, S/2, S/2]             consumed by d(4 ngf)
The residual trunk sees z through what the encoder made of it. No skip connections.
"""
from __future__ import annotations

from torch import Tensor, nn

from bicycle.nn.layers import init_weights, norm_layer
from bicycle.registry import GeneratorArgs, InjectionPoint, InjectorSpec

DOWNSAMPLINGS = 2


class ResidualBlock(nn.Module):
    """x [N, C, H, W] -> x + conv(norm(relu(conv(x)))) [N, C, H, W], reflection padded."""

    def __init__(self, channels: int, norm: str, dropout: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), norm_layer(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _up(kind: str, cin: int, cout: int) -> list[nn.Module]:
    if kind == "basic":
        return [nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1)]
    if kind == "bilinear":
        return [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)]
    raise ValueError(f"resnet generator: unknown upsample {kind!r}")


class ResnetGenerator(nn.Module):
    """G(A, z): A [N, in, S, S], z [N, nz] -> B [N, out, S, S] in [-1, 1]; S must be a multiple of 4."""

    def __init__(self, args: GeneratorArgs, injector: InjectorSpec, n_blocks: int) -> None:
        super().__init__()
        s, ngf = args.image_size, args.ngf
        if s % (2**DOWNSAMPLINGS):
            raise ValueError(f"resnet generator: image size {s} is not a multiple of {2**DOWNSAMPLINGS}")
        widths = [args.in_channels, ngf, 2 * ngf]
        points = [InjectionPoint(i, widths[i], s >> max(0, i - 1), s >> max(0, i - 1)) for i in range(3)]
        self.injector = injector.build(points, args.nz)
        cin = self.injector.channels_after
        self.encoder = nn.ModuleList([
            nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(cin(0), ngf, 7), norm_layer(args.norm, ngf), nn.ReLU()),
            nn.Sequential(nn.Conv2d(cin(1), 2 * ngf, 3, 2, 1), norm_layer(args.norm, 2 * ngf), nn.ReLU()),
            nn.Sequential(nn.Conv2d(cin(2), 4 * ngf, 3, 2, 1), norm_layer(args.norm, 4 * ngf), nn.ReLU()),
        ])
        self.trunk = nn.Sequential(*[ResidualBlock(4 * ngf, args.norm, args.dropout) for _ in range(n_blocks)])
        self.decoder = nn.Sequential(
            *_up(args.upsample, 4 * ngf, 2 * ngf), norm_layer(args.norm, 2 * ngf), nn.ReLU(),
            *_up(args.upsample, 2 * ngf, ngf), norm_layer(args.norm, ngf), nn.ReLU(),
            nn.ReflectionPad2d(3), nn.Conv2d(ngf, args.out_channels, 7), nn.Tanh(),
        )
        init_weights(self)

    def forward(self, a: Tensor, z: Tensor) -> Tensor:
        x = a
        for i, block in enumerate(self.encoder):
            x = block(self.injector(i, x, z))
        return self.decoder(self.trunk(x))
