"""EXPERIMENT, not a feature: the U-Net with z also scaling and shifting the decoder's features (FiLM, Perez et al.,
2018) after every up-path instance norm, before the next ReLU: x * (1 + gamma_i(z)) + beta_i(z), gamma_i, beta_i
linear in z. Loaded by Python at start-up when this folder is on PYTHONPATH, it patches
``bicycle.nn.unet.UNetGenerator`` in place for that process and its subprocesses (a run trained with it can only be
loaded with it). It reproduces the `upfilm` rows of benchmarks/README.md ("Where the fill is lost"):

    PYTHONPATH=benchmarks/prototypes/decoder_film python benchmarks/generalization.py --data shapes-outline-big \\
        --image-size 64 --seeds 0 1 2 --label upfilm --threads 1 --out /tmp/upfilm

Why: a tiled z concatenated before a conv adds a per-channel constant that the instance norm after the conv removes,
so G's decoder sees z only through the spatial patterns of its innermost level; a fill colour chosen by z for a
region G must find itself (outline inputs) has to be rebuilt from those. A real version needs the injector contract
(bicycle/registry.py) to offer up-path points.
"""
import torch
from torch import nn

import bicycle.nn.unet as unet
from bicycle.nn.layers import init_weights

_init = unet.UNetGenerator.__init__


def __init__(self, args, injector, depth):
    _init(self, args, injector, depth)
    in_ch = [args.in_channels] + [args.ngf * min(2**i, 8) for i in range(depth)][:-1]
    self.up_film = nn.ModuleList([nn.Linear(args.nz, 2 * in_ch[i]) for i in range(depth)])  # index 0 unused
    init_weights(self.up_film)


def forward(self, a, z):
    skips, x = [], a
    for i, down in enumerate(self.downs):
        skips.append(x)
        x = down(self.injector(i, x, z))
    for i in range(self.depth - 1, -1, -1):
        x = self.ups[i](x)
        if i > 0:
            gamma, beta = self.up_film[i](z).view(z.shape[0], 2, -1, 1, 1).unbind(1)
            x = torch.cat([x * (1 + gamma) + beta, skips[i]], 1)
    return x


unet.UNetGenerator.__init__ = __init__
unet.UNetGenerator.forward = forward
