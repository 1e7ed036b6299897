"""Encoders E(B) -> (mu, logvar), each [N, nz], at any resolution (adaptive global pooling)."""
from __future__ import annotations

from torch import Tensor, nn

from bicycle.nn.layers import floor_log2, init_weights, norm_layer


class BasicBlock(nn.Module):
    """norm-lrelu-conv3x3-norm-lrelu-conv3x3-avgpool2, plus an avgpool2 + 1x1 conv shortcut."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            norm_layer(norm, cin), nn.LeakyReLU(0.2), nn.Conv2d(cin, cin, 3, 1, 1),
            norm_layer(norm, cin), nn.LeakyReLU(0.2), nn.Conv2d(cin, cout, 3, 1, 1), nn.AvgPool2d(2, 2),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, 1, 0))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.shortcut(x)


def encoder_blocks(image_size: int) -> int:
    """Down-samplings of the encoders: 5 at 256 px, 4 at 128, 3 at 64, 2 at 32 (as resnet_256/128)."""
    return max(2, min(5, floor_log2(image_size) - 3))


class _GaussianHeads(nn.Module):
    """conv trunk -> global features [N, C] -> (mu, logvar), each [N, nz], from two linear heads."""

    conv: nn.Sequential
    fc_mu: nn.Linear
    fc_logvar: nn.Linear

    def forward(self, b: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(b).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)


class ResNetEncoder(_GaussianHeads):
    """E_ResNet: 4x4 stride-2 conv, then n-1 BasicBlocks (channels nef*min(4, k)), global avg pool,
    two linear heads. B [N, in, S, S] -> (mu, logvar) [N, nz]."""

    def __init__(self, in_channels: int, nz: int, image_size: int, nef: int = 64, norm: str = "instance") -> None:
        super().__init__()
        n_blocks = encoder_blocks(image_size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nef, 4, 2, 1)]
        cout = nef
        for n in range(1, n_blocks):
            cin, cout = nef * min(4, n), nef * min(4, n + 1)
            layers.append(BasicBlock(cin, cout, norm))
        layers += [nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1)]
        self.conv = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(cout, nz)
        self.fc_logvar = nn.Linear(cout, nz)
        init_weights(self)


class ConvEncoder(_GaussianHeads):
    """E_NLayers: stride-2 4x4 convs (channels nef*min(4, 2**k), as the original) with norm + LeakyReLU,
    global avg pool, two linear heads. B [N, in, S, S] -> (mu, logvar) [N, nz]."""

    def __init__(self, in_channels: int, nz: int, image_size: int, nef: int = 64, norm: str = "instance") -> None:
        super().__init__()
        n_layers = encoder_blocks(image_size) - 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, nef, 4, 2, 1), nn.LeakyReLU(0.2)]
        cout = nef
        for n in range(1, n_layers + 1):
            cin, cout = nef * min(4, 2 ** (n - 1)), nef * min(4, 2**n)
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), norm_layer(norm, cout), nn.LeakyReLU(0.2)]
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.conv = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(cout, nz)
        self.fc_logvar = nn.Linear(cout, nz)
        init_weights(self)


ENCODERS = {"resnet": ResNetEncoder, "conv": ConvEncoder}
