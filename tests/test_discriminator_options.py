"""The discriminators' options: ``--diffaug`` (differentiable augmentation of D's inputs: colour, translation, cutout,
per image, in train mode) and ``--spectral-norm``."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bicycle.cli import main
from bicycle.nn.augment import TRANSFORMS, augment, color, cutout, parse_policy, translation
from bicycle.nn.discriminator import MultiScaleDiscriminator


def _batch(n: int = 4, size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    one = torch.rand(1, 3, size, size) * 2 - 1
    return one.expand(n, -1, -1, -1).clone()  # n copies of one image


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_keeps_the_shape_passes_gradients_and_draws_per_image(name):
    x = _batch().requires_grad_(True)
    y = TRANSFORMS[name](x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len({tuple(y[i].flatten().tolist()[:64]) for i in range(len(y))}) > 1  # the copies differ


def test_translation_shifts_the_image_by_whole_pixels_within_an_eighth():
    x = _batch(1, 32)
    torch.manual_seed(3)
    y = translation(x)
    found = []
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            shifted = torch.zeros_like(x)
            ys, xs = slice(max(dy, 0), 32 + min(dy, 0)), slice(max(dx, 0), 32 + min(dx, 0))
            src_y, src_x = slice(max(-dy, 0), 32 + min(-dy, 0)), slice(max(-dx, 0), 32 + min(-dx, 0))
            shifted[..., ys, xs] = x[..., src_y, src_x]
            if torch.equal(shifted, y):
                found.append((dy, dx))
    assert len(found) == 1


def test_cutout_blanks_one_square_of_at_most_a_quarter_of_the_image():
    x = torch.ones(64, 3, 32, 32)
    y = cutout(x)
    blank = (y == 0).all(1).flatten(1).float().mean(1)
    assert (blank <= 0.25 + 1e-6).all() and (blank > 0).all()
    assert len(set(blank.tolist())) > 1  # positions differ per image (clipped at the borders)


def test_colour_moves_brightness_and_contrast_but_keeps_a_grey_image_grey():
    grey = torch.zeros(8, 3, 16, 16) + torch.linspace(-0.5, 0.5, 16)
    y = color(grey)
    assert torch.allclose(y[:, 0], y[:, 1]) and torch.allclose(y[:, 1], y[:, 2])
    assert y.mean(dim=(1, 2, 3)).std() > 0.05


def test_a_policy_parses_in_order_and_names_unknown_transforms():
    assert parse_policy("") == ()
    assert parse_policy(" translation, color ") == ("translation", "color")
    with pytest.raises(ValueError, match="colour"):
        parse_policy("colour")
    torch.manual_seed(1)
    a = augment(_batch(), ("translation", "color"))
    torch.manual_seed(1)
    assert torch.equal(a, augment(_batch(), ("translation", "color")))


def test_the_discriminator_augments_in_train_mode_only():
    D = MultiScaleDiscriminator(3, 32, ndf=4, n_layers=2, scales=2, augment=("translation", "cutout"))
    plain = MultiScaleDiscriminator(3, 32, ndf=4, n_layers=2, scales=2)
    plain.load_state_dict(D.state_dict())  # the same parameters: augmentation adds none
    x = _batch()
    D.eval(), plain.eval()
    assert all(torch.equal(p, q) for p, q in zip(D(x), plain(x)))
    D.train()
    assert not torch.equal(D(x)[0], D(x)[0])


def test_training_with_diffaug_runs_and_a_bad_policy_is_a_usage_error(tmp_path):
    tiny = ["--image-size", "32", "--batch-size", "4", "--ngf", "8", "--nef", "8", "--ndf", "8", "--device", "cpu",
            "--steps", "2", "--checkpoint-every", "2", "--sample-every", "2"]
    r = CliRunner().invoke(main, ["train", *tiny, "--diffaug", "color,translation,cutout", "--run-dir",
                                  str(tmp_path / "ok")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", *tiny, "--diffaug", "blur", "--run-dir", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--diffaug: unknown augmentation(s) blur" in r.output
    assert not (tmp_path / "bad").exists()


def test_spectral_norm_holds_each_convolution_near_unit_gain():
    D = MultiScaleDiscriminator(3, 32, ndf=8, n_layers=2, scales=2, spectral=True).train()
    x = torch.randn(4, 3, 32, 32)
    for _ in range(30):  # power iterations, one per call
        D(x)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(hasattr(c, "parametrizations") for c in convs)
    for c in convs:
        sigma = torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2)
        assert 0.9 < float(sigma) < 1.1


def test_spectral_norm_resumes_exactly(tmp_path, monkeypatch):
    from bicycle import io
    from bicycle.train import loop
    from tiny import spy_kl_scales, tiny_config

    cfg = tiny_config(**{"train.steps": 4, "train.checkpoint_every": 100, "net.spectral_norm": True})
    straight = loop.train(cfg, tmp_path / "a", echo=lambda _m: None)
    spy_kl_scales(monkeypatch, interrupt_after=2)
    assert loop.train(cfg, tmp_path / "b", echo=lambda _m: None).interrupted
    monkeypatch.undo()
    loop.train(io.load_checkpoint(tmp_path / "b").config, tmp_path / "b", resume=True, echo=lambda _m: None)
    one, two = io.load_checkpoint(tmp_path / "a"), io.load_checkpoint(tmp_path / "b")
    assert straight.step == two.step == 4
    assert any("parametrizations.weight.0._u" in k for k in one.tensors)
    for k, v in one.tensors.items():
        if not k.startswith("rng."):
            assert torch.equal(two.tensors[k], v), k


@pytest.mark.gpu
def test_gpu_augmentation_and_spectral_norm_under_replay():
    from bicycle.train.graph import GraphedStep
    from tiny import tiny_state

    state, a, b, cfg = tiny_state("cuda", **{"net.image_size": 64, "train.impl": "auto",
                                            "net.diffaug": "color,translation,cutout", "net.spectral_norm": True})
    g = GraphedStep(state, tuple(a.shape), tuple(b.shape), cfg.net.nz, "cuda", warmup=1)
    for _ in range(2):
        g.step(a, b)
    assert g.captured
    D = state.nets.D
    with torch.no_grad():
        first, second = D(b)[0].clone(), D(b)[0].clone()
    assert not torch.equal(first, second)
    assert all(torch.isfinite(v).all() for v in g.replay().values())


@pytest.mark.parametrize(("norm", "d_norm", "want"), [("instance", "same", "InstanceNorm"), ("batch", "same", "BatchNorm2d"),
                                                      ("instance", "none", None), ("instance", "batch", "BatchNorm2d")])
def test_d_norm_chooses_the_discriminators_normalization_and_leaves_g_and_e_alone(norm, d_norm, want):
    from bicycle.build import build_networks
    from bicycle.plugins import get_plugins
    from tiny import tiny_config

    nets = build_networks(tiny_config(**{"net.norm": norm, "net.d_norm": d_norm}), get_plugins().registry)
    kinds = {type(m).__name__ for m in nets.D.modules()} | {type(m).__name__ for m in nets.D2.modules()}
    norms = {k for k in kinds if "Norm" in k}
    assert norms == ({want} if want else set())
    g_norms = {type(m).__name__ for m in nets.G.modules() if "Norm" in type(m).__name__}
    assert g_norms == {"InstanceNorm" if norm == "instance" else "BatchNorm2d"}



@pytest.mark.parametrize(("norm", "e_norm", "want"), [("instance", "same", {"InstanceNorm"}), ("instance", "none", set()),
                                                      ("batch", "instance", {"InstanceNorm"})])
def test_e_norm_chooses_the_encoders_normalization_and_leaves_g_and_d_alone(norm, e_norm, want):
    from bicycle.build import build_networks
    from bicycle.plugins import get_plugins
    from tiny import tiny_config

    nets = build_networks(tiny_config(**{"net.norm": norm, "net.e_norm": e_norm}), get_plugins().registry)
    assert {type(m).__name__ for m in nets.E.modules() if "Norm" in type(m).__name__} == want
    own = "InstanceNorm" if norm == "instance" else "BatchNorm2d"
    for net in (nets.G, nets.D):
        assert {type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__} == {own}


@pytest.mark.parametrize(("key", "flag"), [("net.norm", "--norm"), ("net.d_norm", "--d-norm"), ("net.e_norm", "--e-norm")])
def test_batch_norm_anywhere_is_refused_under_torchrun(key, flag):
    from bicycle.commands.preflight import check_parallel
    from bicycle.errors import ConfigError
    from bicycle.train.distributed import World
    from tiny import tiny_config

    cfg = tiny_config(**{key: "batch"})
    with pytest.raises(ConfigError, match=rf"^{flag} batch under torchrun would need SyncBatchNorm"):
        check_parallel(World(launched=True), cfg)
    check_parallel(World(launched=False), cfg)  # one process: fine
