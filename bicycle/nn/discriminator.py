"""Multi-scale PatchGAN discriminator (D_NLayersMulti) whose depth and scales adapt to the image size."""
from __future__ import annotations

from torch import Tensor, nn

from bicycle.nn.augment import augment
from bicycle.nn.layers import floor_log2, init_weights, norm_layer


def patch_layers(size: int, n_layers: int) -> int:
    """Stride-2 layers a PatchGAN can use on ``size`` px so its output is at least 2x2 (0 if none)."""
    # Output side = size / 2**L - 2 (two 4x4 stride-1 convs with padding 1) >= 2  <=>  2**L <= size / 4.
    return max(0, min(n_layers, floor_log2(size // 4)))


class PatchGAN(nn.Module):
    """NLayerDiscriminator: B [N, in, s, s] -> logits [N, 1, s / 2**L - 2, s / 2**L - 2]."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2),
                   nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` PatchGANs; scale k sees the image after k AvgPool(3, 2, 1, count_include_pad=False)
    and has ndf // 2**k filters. Scales too small for a 1-layer PatchGAN are dropped; each scale uses
    as many of ``n_layers`` stride-2 layers as its size allows.

    forward: B [N, in, S, S] -> list of logits, one [N, 1, h_k, w_k] per scale. ``augment``: a DiffAugment policy
    (:mod:`bicycle.nn.augment`) applied to every input in train mode (real and fake alike); () is off.
    ``spectral``: spectral normalization of every convolution (Miyato et al., 2018; one power iteration per call in
    train mode, its vectors kept as buffers).
    """

    def __init__(self, in_channels: int, image_size: int, ndf: int = 64, n_layers: int = 3,
                 scales: int = 2, norm: str = "instance", augment: tuple[str, ...] = (),
                 spectral: bool = False) -> None:
        super().__init__()
        self.augment = augment
        nets = []
        for k in range(scales):
            layers = patch_layers(image_size >> k, n_layers)
            if layers < 1:
                break
            nets.append(PatchGAN(in_channels, max(1, ndf >> k), layers, norm))
        if not nets:
            raise ValueError(f"image size {image_size} is too small for a PatchGAN")
        self.nets = nn.ModuleList(nets)
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        init_weights(self)
        if spectral:
            for conv in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
                nn.utils.parametrizations.spectral_norm(conv)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.augment and self.training:
            x = augment(x, self.augment)
        outs = []
        for k, net in enumerate(self.nets):
            if k:
                x = self.down(x)
            outs.append(net(x))
        return outs
