"""Networks: every built-in injector with every built-in backbone; encoders and discriminators at
many sizes; unsupported sizes are usage errors."""
from __future__ import annotations

import pytest
import torch

from bicycle.config import replace, validate
from bicycle.errors import ConfigError
from bicycle.nn.discriminator import MultiScaleDiscriminator
from bicycle.nn.encoder import ConvEncoder, ResNetEncoder
from bicycle.plugins import get_plugins
from bicycle.registry import GeneratorArgs
from bicycle.build import resolve
from tiny import tiny_config

BACKBONE_SIZES = {"unet": [32, 48, 64], "unet128": [128], "unet256": [256]}


def _registry():
    return get_plugins().registry


@pytest.mark.parametrize("inject", ["input", "all", "all-film"])
@pytest.mark.parametrize("backbone", sorted(BACKBONE_SIZES))
def test_every_injector_with_every_backbone(backbone, inject):
    reg = _registry()
    assert set(BACKBONE_SIZES) <= set(reg.names("backbone")) and {"input", "all"} <= set(reg.names("injector"))
    for size in BACKBONE_SIZES[backbone]:
        torch.manual_seed(0)
        args = GeneratorArgs(in_channels=1, out_channels=3, nz=5, image_size=size, ngf=4, norm="instance",
                             upsample="basic", dropout=True)
        G = reg.backbone(backbone).build(args, reg.injector(inject)).eval()
        a = torch.randn(2, 1, size, size)
        z1, z2 = torch.randn(2, 5), torch.randn(2, 5)
        out1, out2 = G(a, z1), G(a, z2)
        assert out1.shape == (2, 3, size, size)
        assert out1.abs().max() <= 1.0
        assert (out1 - out2).abs().max() > 1e-6, "output must depend on z"
        assert torch.equal(out1, G(a, z1)), "eval mode must be deterministic"


def test_inject_all_concatenates_at_every_down_block_and_input_only_at_the_first():
    reg = _registry()
    args = GeneratorArgs(1, 3, 8, 64, ngf=4)
    g_all = reg.backbone("unet").build(args, reg.injector("all"))
    g_in = reg.backbone("unet").build(args, reg.injector("input"))
    conv_in = lambda g: [d[-1].in_channels if isinstance(d[-1], torch.nn.Conv2d) else next(
        m for m in d if isinstance(m, torch.nn.Conv2d)).in_channels for d in g.downs]
    assert conv_in(g_all) == [1 + 8, 4 + 8, 8 + 8, 16 + 8, 32 + 8, 32 + 8]
    assert conv_in(g_in) == [1 + 8, 4, 8, 16, 32, 32]


def test_all_film_is_all_plus_a_decoder_modulation_that_starts_near_identity():
    """With its FiLM layers at zero, all-film computes exactly what all does with the same U-Net weights; its
    modulation acts after each up block's norm (levels depth-1..1), where a norm cannot remove it."""
    reg = _registry()
    args = GeneratorArgs(1, 3, 8, 64, ngf=4)
    torch.manual_seed(0)
    g_all = reg.backbone("unet").build(args, reg.injector("all")).eval()
    g_film = reg.backbone("unet").build(args, reg.injector("all-film")).eval()
    film = {k: v for k, v in g_film.state_dict().items() if ".film." in k}
    assert sorted({k.split(".")[2] for k in film}, key=int) == ["6", "7", "8", "9", "10"]  # 6 levels: 5 decoder points
    assert film["injector.film.6.weight"].shape == (2 * 32, 8) and film["injector.film.10.weight"].shape == (2 * 4, 8)
    assert max(v.abs().max() for v in film.values()) < 0.2  # init gain 0.02: close to identity
    missing = g_film.load_state_dict(g_all.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(film)
    a, z = torch.randn(2, 1, 64, 64), torch.randn(2, 8)
    with torch.no_grad():
        for p in g_film.injector.film.parameters():
            p.zero_()
        assert torch.equal(g_film(a, z), g_all(a, z))
        g_film.injector.film["10"].weight[0, 0] = 5.0  # gamma of the outermost decoder point's first channel
        z2 = z.clone()
        z2[1, 0] += 1.0
        moved = g_film(a, z2) - g_film(a, z)
        assert moved[0].abs().max() == 0 and moved[1].abs().max() > 1e-4


@pytest.mark.parametrize("upsample", ["basic", "bilinear", "nearest"])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_generator_options(norm, upsample):
    reg = _registry()
    args = GeneratorArgs(3, 3, 8, 32, ngf=4, norm=norm, upsample=upsample)
    G = reg.backbone("unet").build(args, reg.injector("all"))
    assert G(torch.randn(2, 3, 32, 32), torch.randn(2, 8)).shape == (2, 3, 32, 32)


def test_refine_puts_a_full_resolution_block_before_the_output_and_is_off_by_default():
    reg = _registry()
    plain = reg.backbone("unet").build(GeneratorArgs(3, 3, 8, 32, ngf=4, upsample="nearest"), reg.injector("all"))
    G = reg.backbone("unet").build(GeneratorArgs(3, 3, 8, 32, ngf=4, upsample="nearest", refine=6), reg.injector("all"))
    convs = [m for m in G.ups[0] if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 6), (6, 3)]
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in G.ups[0])  # a norm would drop the output's colour
    assert [type(m).__name__ for m in plain.ups[0]][-2:] == ["Conv2d", "Tanh"] and len(
        [m for m in plain.ups[0] if isinstance(m, torch.nn.Conv2d)]) == 1
    out = G(torch.randn(2, 3, 32, 32), torch.randn(2, 8))
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    assert tiny_config().net.refine == 0
    with pytest.raises(ConfigError, match="net.refine must be 0"):
        validate(tiny_config(**{"net.refine": -1}))


def test_dropout_sits_on_inner_8ngf_levels_only():
    reg = _registry()
    G = reg.backbone("unet256").build(GeneratorArgs(3, 3, 8, 256, ngf=2, dropout=True), reg.injector("all"))
    levels = [i for i, up in enumerate(G.ups) if any(isinstance(m, torch.nn.Dropout) for m in up)]
    assert levels == [4, 5, 6]  # num_downs - 5 = 3 blocks, as G_Unet_add_all


@pytest.mark.parametrize("encoder", [ResNetEncoder, ConvEncoder])
@pytest.mark.parametrize("size", [32, 48, 64, 96, 128, 256])
def test_encoders_return_mu_logvar_at_any_resolution(encoder, size):
    E = encoder(3, 8, size, nef=4)
    mu, logvar = E(torch.randn(3, 3, size, size))
    assert mu.shape == logvar.shape == (3, 8)


@pytest.mark.parametrize("size,expected_scales", [(32, 2), (64, 2), (96, 2), (256, 2)])
def test_discriminator_scales_adapt(size, expected_scales):
    D = MultiScaleDiscriminator(3, size, ndf=4, n_layers=3, scales=2)
    outs = D(torch.randn(2, 3, size, size))
    assert len(outs) == expected_scales
    assert all(o.shape[0] == 2 and o.shape[1] == 1 and o.shape[-1] >= 2 for o in outs)
    # the second scale sees a 2x smaller image with half the filters
    assert D.nets[1].model[0].out_channels == 2


def test_discriminator_at_256_matches_the_paper():
    D = MultiScaleDiscriminator(3, 256, ndf=64, n_layers=3, scales=2)
    outs = D(torch.randn(1, 3, 256, 256))
    assert [tuple(o.shape[-2:]) for o in outs] == [(30, 30), (14, 14)]  # 70x70 PatchGAN outputs


@pytest.mark.parametrize("backbone,size", [("unet", 40), ("unet", 24), ("unet128", 64), ("unet256", 128)])
def test_unsupported_size_is_a_usage_error(backbone, size):
    cfg = tiny_config(**{"net.backbone": backbone, "net.image_size": size})
    with pytest.raises(ConfigError, match=str(size)):
        resolve(cfg, _registry())


def test_every_size_from_32_that_is_a_multiple_of_16_works_for_g_e_d():
    reg = _registry()
    for size in (32, 48, 80, 112, 160):
        cfg = resolve(tiny_config(**{"net.image_size": size}), reg)
        from bicycle.build import build_networks
        nets = build_networks(cfg, reg)
        a = torch.randn(2, 3, size, size)
        fake = nets.G(a, torch.randn(2, 8))
        assert fake.shape == a.shape
        assert nets.E(fake)[0].shape == (2, 8)
        assert len(nets.D(fake)) >= 1


def test_instance_norm_keeps_channels_last_and_the_maths():
    """The bf16 step runs channels_last: torch's instance norm would return NCHW (a layout conversion at
    every norm). Ours keeps the layout, equals torch's maths, and is torch's kernel for contiguous inputs."""
    from bicycle.nn.layers import norm_layer

    norm = norm_layer("instance", 6)
    x = torch.randn(3, 6, 9, 7, dtype=torch.float64) * 3 + 1
    xcl = x.contiguous(memory_format=torch.channels_last)
    y = norm(xcl)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    want = torch.nn.functional.instance_norm(x.float(), eps=norm.eps)
    torch.testing.assert_close(y.float(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(norm(x.float()), want)  # contiguous: torch's kernel, bit for bit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = norm(xcl.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16 and yb.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yb.float(), want, rtol=2e-2, atol=2e-2)
