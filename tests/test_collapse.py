"""Posterior collapse is not silent: a run forced to collapse warns once with the remedies."""
from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from bicycle.cli import main
from bicycle.train.collapse import ACTIVE_KL, CollapseCheck, per_dim_kl

TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "40",
        "--log-every", "20", "--sample-every", "10", "--checkpoint-every", "40", "--impl", "ref"]


def test_per_dimension_kl_is_the_batch_mean_whose_sum_is_the_kl():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    kl_sum = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum()
    torch.testing.assert_close(per_dim_kl(mu, logvar).sum() * 6, kl_sum)
    assert torch.equal(per_dim_kl(torch.zeros(3, 2), torch.zeros(3, 2)), torch.zeros(2))  # the prior itself


def test_what_counts_as_collapse():
    healthy = CollapseCheck([0.9, 0.3, 0.0, 0.01], 2, encoded_l1=0.05, random_l1=0.2)
    assert healthy.problem() is None
    assert "0 of 4 latent dimensions" in CollapseCheck([0.0] * 4, 0, 0.05, 0.2).problem()
    assert "no closer" in CollapseCheck([0.9] * 4, 4, 0.2, 0.2).problem()
    assert CollapseCheck(None, None, 0.05, 0.2).problem() is None  # non-variational: the L1 test alone
    assert ACTIVE_KL > 0


def test_a_run_forced_to_collapse_warns_once_and_records_it(tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", *TINY, "--lambda-kl", "100", "--kl-warmup", "0", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    assert r.output.count("warning: posterior collapse") == 1 and "--kl-free-bits" in r.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["posterior_collapse_warning"] is True
    assert [h["active_dims"] for h in summary["posterior_collapse"]] == [0, 0, 0, 0]


def test_the_collapse_warning_waits_for_the_end_of_the_kl_warm_up(tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", *TINY, "--lambda-kl", "100", "--kl-warmup", "0.6", "--run-dir", str(run)])
    assert r.exit_code == 0, r.output
    assert r.output.count("warning: posterior collapse at step 30") == 1, r.output  # checks at 10, 20: warm-up
