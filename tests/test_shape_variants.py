"""The harder ``shapes`` variants (bicycle.data.shape_variants) and their exact oracles."""
from __future__ import annotations

import json

import pytest
import torch

from bicycle.data.shape_variants import BACKGROUNDS, FILLS, HELD_OUT, VARIANTS, ShapeVariantDataset
from bicycle.inference.metrics import ideal_distinct_modes
from bicycle.testing.fixtures import DatasetConformance, bicycle_registry  # noqa: F401

NAMES = sorted(VARIANTS)


def _recolour(ds, a, fill, bg):
    """A B of the same shapes with fill colours [N, 3] inside and background colours [N, 3] outside."""
    inside = ds.region_of(a)
    return torch.where(inside, fill.view(-1, 3, 1, 1), bg.view(-1, 3, 1, 1)).float()


def test_the_family_is_registered_with_oracles(bicycle_registry):  # noqa: F811
    assert set(NAMES) == {"shapes-fillbg", "shapes-outline-big", "shapes-unequal", "shapes-outline"}
    for name in NAMES:
        spec = bicycle_registry.dataset(name)
        assert spec.has_oracle and not spec.needs_path
    assert "HELD OUT" in bicycle_registry.dataset(HELD_OUT).description
    import bicycle.data.shape_variants as mod
    assert "HELD OUT" in mod.__doc__ and "Do not tune" in mod.__doc__


def test_colours_differ_clearly():
    colours = torch.cat([FILLS, BACKGROUNDS])
    dist = (colours[:, None] - colours[None]).abs().amax(-1)
    assert dist[~torch.eye(7, dtype=torch.bool)].min() >= 0.9 - 1e-6  # fill/fill, bg/bg, fill/bg
    for group in (FILLS, BACKGROUNDS):  # the mean of two is 0.9 from every member
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                mean = (group[i] + group[j]) / 2
                assert (mean - group).abs().amax(-1).min() >= 0.9 - 1e-6


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [32, 128])
def test_ground_truth_is_valid_and_in_its_mode(name, size):
    ds = ShapeVariantDataset(name, size, "train", seed=5)
    n = 200 if size == 32 else 24
    a, b = ds.get_batch(list(range(n)))
    assert a.shape == (n, 1, size, size) and b.shape == (n, 3, size, size)
    assert a.dtype == b.dtype == torch.float32 and a.abs().max() <= 1 and b.abs().max() <= 1
    assert ds.is_valid(a, b).all()
    assert ds.mode_of(a, b).tolist() == [ds.true_mode(i) for i in range(n)]
    truth = torch.stack([ds._inside(ds.params(i)) for i in range(n)])
    assert torch.equal(ds.region_of(a)[:, 0], truth)  # the oracle recovers the exact shape from A
    if VARIANTS[name].outline:  # A is a thin boundary, not the silhouette
        share = (a > 0).flatten(1).sum(1) / truth.flatten(1).sum(1)
        assert share.max() < (0.7 if size == 32 else 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_rejects_blends_wrong_colours_and_other_shapes(name):
    ds = ShapeVariantDataset(name, 32, "val", seed=2)
    n = 48
    a, b = ds.get_batch(list(range(n)))
    modes = ds.mode_of(a, b)
    f, g = ds.split_mode(modes)
    # every (fill, background) is a valid B of each A, recognised as its mode
    for k in range(ds.num_modes):
        kf, kg = ds.split_mode(k)
        other = _recolour(ds, a, FILLS[kf].expand(n, 3), BACKGROUNDS[kg].expand(n, 3))
        assert ds.is_valid(a, other).all() and (ds.mode_of(a, other) == k).all()
    # a blend with another fill, another background, or both
    shift = 1 + torch.arange(n) % 3
    for nf, ng in (((f + shift) % 4, g), (f, (g + 1 + torch.arange(n) % 2) % 3), ((f + shift) % 4, (g + 1) % 3)):
        other = _recolour(ds, a, FILLS[nf], BACKGROUNDS[ng])
        assert ds.is_valid(a, other).all()
        assert not ds.is_valid(a, (b + other) / 2).any()
    # the wrong fill: a background colour, or grey; the wrong background: a fill colour, or grey
    grey = torch.zeros(n, 3)
    for fill, bg in ((BACKGROUNDS[g], BACKGROUNDS[g]), (BACKGROUNDS[(g + 1) % 3], BACKGROUNDS[g]), (grey, BACKGROUNDS[g]),
                     (FILLS[f], FILLS[(f + 1) % 4]), (FILLS[f], grey), (FILLS[f], FILLS[f])):
        assert not ds.is_valid(a, _recolour(ds, a, fill, bg)).any()
    # the B of another shape (the next sample's, where the two shapes overlap with IoU < 0.6: like
    # ``shapes``' oracle, this one accepts a B whose shape covers about 85% of A's and little more)
    region = ds.region_of(a)[:, 0].flatten(1)
    nxt = region.roll(1, dims=0)
    iou = (region & nxt).sum(1) / (region | nxt).sum(1)
    other = iou < 0.6
    assert other.sum() >= n // 2
    assert not ds.is_valid(a, b.roll(1, dims=0))[other].any()
    assert not ds.is_valid(a, b.roll(32 // 3, dims=-1)).any()
    g_ = torch.Generator().manual_seed(0)
    assert not ds.is_valid(a, torch.rand(b.shape, generator=g_) * 2 - 1).any()


@pytest.mark.parametrize("name", NAMES)
def test_mode_frequencies_match_p_mode(name):
    ds = ShapeVariantDataset(name, 32, "train", seed=1)
    n = 6000
    counts = torch.bincount(torch.tensor([ds.true_mode(i) for i in range(n)]), minlength=12).double()
    p = ds.mode_probabilities(torch.zeros(3, 1, 32, 32))
    assert p.shape == (3, 12) and torch.allclose(p.sum(1), torch.ones(3, dtype=p.dtype))
    expected = p[0].double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 33.0  # 11 degrees of freedom: P(chi2 > 33) ~ 5e-4
    if name == "shapes-unequal":
        assert torch.allclose(p[0].double(), torch.outer(torch.tensor([.4, .3, .2, .1]), torch.tensor([.5, .3, .2])).flatten().double())
    else:
        assert torch.allclose(p[0], torch.full((12,), 1 / 12))


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_the_same_scene_at_every_size(name):
    one, two = ShapeVariantDataset(name, 48, seed=1), ShapeVariantDataset(name, 48, seed=1)
    for i in (0, 5, 19_999):
        assert torch.equal(one[i][0], two[i][0]) and torch.equal(one[i][1], two[i][1])
    assert not torch.equal(ShapeVariantDataset(name, 48, seed=2)[5][1], one[5][1])
    assert not torch.equal(ShapeVariantDataset(name, 48, "val", seed=1)[5][1], one[5][1])
    assert ShapeVariantDataset(name, 32, seed=1).params(7) == ShapeVariantDataset(name, 128, seed=1).params(7)
    with pytest.raises(IndexError):
        one[len(one)]


def test_held_out_shapes_cover_10_to_25_percent():
    ds = ShapeVariantDataset(HELD_OUT, 128, "val")
    areas = torch.tensor([ds.params(i)["area"] for i in range(500)])
    assert areas.min() >= 0.10 and areas.max() <= 0.25
    truth = torch.stack([ds._inside(ds.params(i)) for i in range(60)]).flatten(1).double().mean(1)
    assert truth.min() >= 0.10 and truth.max() <= 0.25


def test_shapes_keeps_its_params_and_its_grey_b_is_invalid_here():
    from bicycle.data.shapes import ShapesDataset
    assert list(ShapesDataset(32, seed=3).params(0)) == ["kind", "cx", "cy", "rx", "ry", "angle", "mode"]
    grey = ShapesDataset(32)
    a, b = grey.get_batch(list(range(8)))
    assert not ShapeVariantDataset("shapes-fillbg", 32).is_valid(a, b).any()  # grey is no background here


class TestHeldOutConformance(DatasetConformance):
    dataset = HELD_OUT


class TestUnequalConformance(DatasetConformance):
    dataset = "shapes-unequal"


def test_train_and_eval_on_the_held_out_variant(tmp_path):
    from click.testing import CliRunner

    from bicycle.cli import main
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", HELD_OUT, "--image-size", "32", "--ngf", "8", "--nef", "8",
                                       "--ndf", "8", "--batch-size", "4", "--steps", "2", "--impl", "ref",
                                       "--run-dir", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "oracle: valid rate" in result.output and "(of 12)" in result.output
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--inputs", "4", "--samples", "3",
                                       "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["data"] == HELD_OUT
    for key in ("valid_rate", "modes_per_input", "ideal_modes_per_input", "mode_jsd", "encoded_mode_rate"):
        assert data[key] is not None, key
    ideal = float(ideal_distinct_modes(torch.full((1, 12), 1 / 12), 3)[0])  # 12 (1 - (11/12)^3) = 2.757
    assert abs(data["ideal_modes_per_input"] - ideal) < 1e-6
    assert 0 <= data["valid_rate"] <= 1 and 0 <= data["mode_jsd"] <= 1
