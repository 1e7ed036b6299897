"""Evaluation arithmetic on hand-made cases."""
from __future__ import annotations

import math

import torch

from bicycle.metrics import consecutive_pair_l1, ideal_distinct_modes, jsd_base2, mode_statistics, z_sensitivity


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
