"""Evaluation arithmetic on hand-made cases."""
from __future__ import annotations

import math

import torch

from bicycle.inference.metrics import (consecutive_pair_l1, ideal_distinct_modes, jsd_base2, mode_statistics, prior_coverage,
                             z_sensitivity)


def test_ideal_distinct_modes_matches_the_closed_form():
    uniform8 = torch.full((1, 8), 1 / 8)
    assert math.isclose(float(ideal_distinct_modes(uniform8, 20)), 8 * (1 - (7 / 8) ** 20), rel_tol=1e-6)
    assert float(ideal_distinct_modes(torch.tensor([[1.0, 0.0]]), 20)) == 1.0


def test_jsd_is_zero_for_equal_and_one_for_disjoint_histograms():
    assert jsd_base2(torch.tensor([1.0, 1.0]), torch.tensor([5.0, 5.0])) == 0.0
    assert math.isclose(jsd_base2(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])), 1.0)


def test_mode_statistics_counts_only_valid_samples():
    valid = torch.tensor([[True, True, False, True], [False, False, False, False]])
    modes = torch.tensor([[0, 1, 2, 1], [3, 3, 3, 3]])
    stats = mode_statistics(valid, modes, torch.full((2, 4), 0.25))
    assert stats["valid_rate"] == 3 / 8
    assert stats["modes_per_input"] == 1.0  # {0, 1} and {}
    assert math.isclose(stats["ideal_modes_per_input"], 4 * (1 - 0.75**4))


def test_pair_l1_and_z_sensitivity():
    same = torch.zeros(3, 5, 1, 2, 2) + torch.arange(3.0).view(3, 1, 1, 1, 1)  # z ignored
    assert consecutive_pair_l1(same).eq(0).all() and z_sensitivity(same) == 0.0
    varied = torch.arange(5.0).view(1, 5, 1, 1, 1).expand(3, 5, 1, 2, 2) + torch.arange(3.0).view(3, 1, 1, 1, 1)
    assert torch.allclose(consecutive_pair_l1(varied), torch.ones(3))
    assert math.isclose(z_sensitivity(varied), 1.0)


def test_prior_coverage_is_one_for_the_prior_and_zero_for_far_tiny_clusters():
    z = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(prior_coverage(torch.zeros(1, 8), torch.zeros(1, 8), z), torch.ones(2000))
    far = prior_coverage(torch.full((4, 8), 5.0), torch.full((4, 8), -4.0), z)
    assert float(far.max()) < 1e-6


def test_prior_coverage_estimates_the_overlap_of_two_gaussians():
    """p = N(0, 1), q = N(0, 0.5^2): the densities cross at x^2 = 2 ln 2 / 3, so the overlap is
    P(|N(0,1)| < x) + P(|N(0,1)| > 2x)."""
    x = math.sqrt(2 * math.log(2) / 3)
    phi = lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2)))  # noqa: E731
    expected = (2 * phi(x) - 1) + 2 * (1 - phi(2 * x))
    z = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(1))
    got = float(prior_coverage(torch.zeros(1, 1), torch.full((1, 1), math.log(0.25)), z).mean())
    assert abs(got - expected) < 0.005, (got, expected)


def test_prior_coverage_of_a_mixture_is_the_mean_of_its_components():
    """Two components, each covering one half-line's worth of the prior, cover more than either alone."""
    z = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(2))
    mu, lv = torch.tensor([[-0.8], [0.8]]), torch.full((2, 1), math.log(0.36))
    both = float(prior_coverage(mu, lv, z).mean())
    one = float(prior_coverage(mu[:1], lv[:1], z).mean())
    assert 0.8 < both <= 1.0 and one < 0.6


def test_prior_coverage_is_the_same_in_chunks():
    """Many encodings: the z are processed in chunks, with the same result as all at once."""
    g = torch.Generator().manual_seed(3)
    mu, lv = torch.randn(3000, 8, generator=g), torch.randn(3000, 8, generator=g) * 0.3 - 1
    z = torch.randn(400, 8, generator=g)
    whole = torch.cat([prior_coverage(mu, lv, z[i:i + 1]) for i in range(0, 400, 1)])
    torch.testing.assert_close(prior_coverage(mu, lv, z), whole)
