"""The built-in procedural dataset and its exact oracle."""
from __future__ import annotations

import pytest
import torch

from bicycle.data.shapes import PALETTE, ShapesDataset


@pytest.fixture(params=[32, 64, 128])
def ds(request):
    return ShapesDataset(request.param, "train", seed=3)


def test_real_pairs_are_valid_and_in_their_true_mode(ds):
    a, b = ds.get_batch(list(range(48)))
    assert a.shape == (48, 1, ds.image_size, ds.image_size) and b.shape == (48, 3, ds.image_size, ds.image_size)
    assert ds.is_valid(a, b).all()
    assert ds.mode_of(a, b).tolist() == [ds.true_mode(i) for i in range(48)]


def test_modes_follow_the_stated_distribution_independently_of_a():
    ds = ShapesDataset(32, "train", modes=8)
    modes = torch.tensor([ds.true_mode(i) for i in range(4000)])
    counts = torch.bincount(modes, minlength=8).float()
    assert 1100 < counts[0] < 1300 and counts[1:].min() > 320 and counts[1:].max() < 480  # 1200, then ~400 each
    kinds = [ds.params(i)["kind"] for i in range(4000)]
    for kind in ("ellipse", "rectangle", "triangle"):  # the colour does not depend on A
        share = float((modes[[k == kind for k in kinds]] == 0).float().mean())
        assert 0.25 < share < 0.35
    probs = ds.mode_probabilities(torch.zeros(2, 1, 32, 32))
    assert probs.shape == (2, 8) and torch.allclose(probs.sum(1), torch.ones(2))
    assert torch.allclose(probs[0], torch.tensor([0.3] + [0.1] * 7))


@pytest.mark.parametrize("k", [6, 7, 8])
def test_the_l1_optimal_output_is_the_common_colour(k):
    """What makes a z-ignoring model collapse: the per-channel median of p(B | A) is one valid mode."""
    ds = ShapesDataset(32, modes=k)
    p = ds.mode_probabilities(torch.zeros(1, 1, 32, 32))[0]
    colours = ds.palette  # [K, 3]
    for c in range(3):
        below = float(p[colours[:, c] < 0].sum())
        assert (below > 0.5) == bool(colours[0, c] < 0) and abs(below - 0.5) > 0.02


def _recolour(ds, a, b, modes):
    """The same shapes as b, filled with other palette colours: another valid B of the same A."""
    inside = (b != 0).any(1, keepdim=True)
    return torch.where(inside, PALETTE[modes].view(-1, 3, 1, 1), torch.zeros_like(b))


def test_every_mode_of_an_a_is_valid_and_recognised(ds):
    a, b = ds.get_batch(list(range(8)))
    for k in range(ds.num_modes):
        other = _recolour(ds, a, b, torch.full((8,), k))
        assert ds.is_valid(a, other).all()
        assert (ds.mode_of(a, other) == k).all()


def test_pixel_mean_of_two_valid_bs_of_one_a_is_invalid(ds):
    a, b = ds.get_batch(list(range(32)))
    modes = ds.mode_of(a, b)
    other = _recolour(ds, a, b, (modes + 1 + torch.arange(32) % 7) % 8)
    assert ds.is_valid(a, other).all()
    assert not ds.is_valid(a, (b + other) / 2).any()


def test_noise_is_invalid(ds):
    a, _ = ds.get_batch(list(range(16)))
    g = torch.Generator().manual_seed(0)
    assert not ds.is_valid(a, torch.rand(16, 3, ds.image_size, ds.image_size, generator=g) * 2 - 1).any()
    assert not ds.is_valid(a, torch.zeros(16, 3, ds.image_size, ds.image_size)).any()


def test_b_that_ignores_a_structure_is_invalid(ds):
    a, b = ds.get_batch(list(range(16)))
    s = ds.image_size
    shifted = b.roll(s // 3, dims=-1)  # the right colour, in the wrong place
    assert not ds.is_valid(a, shifted).any()
    filled = PALETTE[ds.mode_of(a, b)].view(-1, 3, 1, 1).expand_as(b)  # colour everywhere
    assert not ds.is_valid(a, filled).any()


def test_deterministic_and_renderable_at_any_size():
    one, two = ShapesDataset(48, seed=1), ShapesDataset(48, seed=1)
    assert torch.equal(one[5][0], two[5][0]) and torch.equal(one[5][1], two[5][1])
    assert not torch.equal(ShapesDataset(48, seed=2)[5][0], one[5][0])
    small, big = ShapesDataset(32, seed=1), ShapesDataset(256, seed=1)
    assert small.params(7) == big.params(7)  # the same scene, rendered at two sizes
    assert big[7][1].shape == (3, 256, 256)
    assert not torch.equal(ShapesDataset(32, "val")[0][0], ShapesDataset(32, "train")[0][0])


def test_k_is_configurable_from_6_to_8():
    from bicycle.errors import ConfigError
    ds = ShapesDataset(32, modes=6)
    assert {ds.true_mode(i) for i in range(300)} == set(range(6))
    with pytest.raises(ConfigError, match="modes"):
        ShapesDataset(32, modes=5)
