"""Sampling z from the aggregate posterior: the EM fit, its file, fit-posterior, --z-source in sample/eval/API."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bicycle
from bicycle.cli import main
from bicycle.errors import CheckpointError, ConfigError
from bicycle.inference.posterior import (FORMAT, GaussianMixture, aggregate_mixture, fit_gmm, fit_gmm_report,
                                         load_posterior, posterior_path, read_posterior, save_posterior)

TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "4",
        "--log-every", "2", "--sample-every", "4", "--checkpoint-every", "4", "--impl", "ref"]


def invoke(*args: str, catch: bool = False):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch)


def known_mixture(n: int = 3000, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 4.0]], dtype=torch.float64)
    a = torch.tensor([[[1.0, 0.0], [0.3, 0.5]], [[0.7, 0.0], [0.0, 0.7]], [[0.5, 0.0], [-0.2, 1.0]]], dtype=torch.float64)
    comp = torch.multinomial(w, n, replacement=True, generator=g)
    x = mu[comp] + torch.einsum("nij,nj->ni", a[comp], torch.randn(n, 2, generator=g, dtype=torch.float64))
    return x, w, mu


def _matched(mix: GaussianMixture, mu: torch.Tensor) -> torch.Tensor:
    """Index of the fitted component nearest each true mean."""
    return torch.cdist(mu, mix.means).argmin(1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_a_known_three_component_mixture(seed):
    x, w, mu = known_mixture()
    mix = fit_gmm(x, k=3, seed=seed, iters=100, tol=1e-6)
    order = _matched(mix, mu)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(mix.weights[order], w, atol=0.03, rtol=0)
    torch.testing.assert_close(mix.means[order], mu, atol=0.1, rtol=0)
    assert mix.covariances.shape == (3, 2, 2)
    torch.testing.assert_close(mix.covariances[order[1]], torch.eye(2, dtype=torch.float64) * 0.49, atol=0.08, rtol=0)
    # sampling at temperature 1 reproduces the data's spread; temperature t scales offsets by t
    z = mix.sample(20000, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 2) and z.dtype == torch.float32
    assert float(mix.log_prob(z.double()).mean()) == pytest.approx(float(mix.log_prob(x).mean()), abs=0.1)
    cold = mix.sample(20000, torch.Generator().manual_seed(0), temperature=0.5)
    k = order[1]
    near = (z.double() - mix.means[k]).norm(dim=1) < 2.0
    torch.testing.assert_close((cold.double() - mix.means[k])[near].std(0), (z.double() - mix.means[k])[near].std(0) * 0.5,
                               atol=0.02, rtol=0)


def test_fit_is_deterministic_for_a_seed_and_caps_points_and_components():
    x, _, _ = known_mixture()
    a, b = fit_gmm(x, 3, seed=7), fit_gmm(x, 3, seed=7)
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    za = a.sample(16, torch.Generator().manual_seed(3))
    assert torch.equal(za, b.sample(16, torch.Generator().manual_seed(3)))
    assert not torch.equal(za, a.sample(16, torch.Generator().manual_seed(4)))
    r = fit_gmm_report(x, 10, seed=0, iters=5, max_points=500)
    assert r.points == 500 and r.iterations <= 5 and r.mixture.k == 10
    assert fit_gmm(x[:20], 10, seed=0).k == 5  # 20 points, nz 2: at most 20 // (2 * 2) components
    assert fit_gmm(x[:1], 10, seed=0).k == 1
    with pytest.raises(ConfigError):
        fit_gmm(torch.full((10, 2), float("nan")), 2)


def test_the_file_round_trips_and_a_stale_one_is_refused(tmp_path):
    x, _, _ = known_mixture(600)
    mix = fit_gmm(x, 3, seed=0)
    path = save_posterior(posterior_path(tmp_path), mix, "step_00000004.safetensors", 4, 600, 0, -3.2)
    loaded, meta = read_posterior(path)
    assert meta["format"] == FORMAT and meta["step"] == "4" and meta["components"] == "3" and meta["points"] == "600"
    assert meta["checkpoint"] == "step_00000004.safetensors" and meta["seed"] == "0"
    for name in ("weights", "means", "covariances"):
        assert torch.equal(getattr(loaded, name), getattr(mix, name))
    assert torch.equal(load_posterior(tmp_path, 4, 2).means, mix.means)
    with pytest.raises(CheckpointError, match=r"fitted for step 4 .*step 8.*bicycle fit-posterior"):
        load_posterior(tmp_path, 8, 2)
    with pytest.raises(CheckpointError, match="nz is 8"):
        load_posterior(tmp_path, 4, 8)
    with pytest.raises(CheckpointError, match="bicycle fit-posterior"):
        load_posterior(tmp_path / "elsewhere", 4, 2)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary left


def test_the_aggregate_posterior_is_each_codes_gaussian_and_samples_stay_on_the_codes():
    """Two separated modes' codes: the aggregate posterior never draws between them (a one-component fit over
    the same means centres on the gap); its components are the codes' own N(mu_i, sigma_i^2)."""
    g = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.full((50, 2), -3.0), torch.full((50, 2), 3.0)]).double()
    logvar = torch.full((100, 2), 2 * torch.log(torch.tensor(0.1)).item(), dtype=torch.float64)
    agg = aggregate_mixture(mu, logvar)
    assert agg.k == 100 and torch.allclose(agg.weights, torch.full((100,), 0.01, dtype=torch.float64))
    assert torch.allclose(agg.covariances[7], torch.diag(torch.tensor([0.01, 0.01], dtype=torch.float64)))
    z = agg.sample(2000, g)
    assert (z.abs() > 2.5).all() and 0.4 < float((z[:, 0] > 0).float().mean()) < 0.6
    one = fit_gmm(mu, 1)
    assert float(one.sample(2000, g)[:, 0].abs().lt(1.0).float().mean()) > 0.15


def test_the_aggregate_posterior_of_a_collapsed_encoder_is_the_prior():
    """mu 0, sigma 1 for every image (a collapsed encoder): codes still spread as N(0, I), so outputs vary with z."""
    agg = aggregate_mixture(torch.zeros(200, 8, dtype=torch.float64), torch.zeros(200, 8, dtype=torch.float64))
    z = agg.sample(20_000, torch.Generator().manual_seed(1))
    assert abs(float(z.std()) - 1.0) < 0.03 and abs(float(z.mean())) < 0.03


def test_aggregate_mixture_refuses_bad_codes():
    with pytest.raises(ConfigError, match="NaN or inf"):
        aggregate_mixture(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ConfigError, match=r"\[M, nz\]"):
        aggregate_mixture(torch.zeros(3, 2), torch.zeros(3, 4))


# -- a tiny trained run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from bicycle import plugins
    plugins.set_plugins(None)
    run = tmp_path_factory.mktemp("posterior") / "run"
    result = invoke("train", *TINY, "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "posterior: " in result.output and (run / "posterior.safetensors").is_file()  # fitted at the end of training
    assert json.loads((run / "summary.json").read_text())["posterior"]["points"] > 0
    return run


@pytest.fixture(scope="module")
def fitted(run: Path) -> Path:
    result = invoke("fit-posterior", run, "--components", "4", "--seed", "1", "--points", "200", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "4 components" in lines[0] and "200 encoded" in lines[0] and " s;" in lines[0]
    _, meta = read_posterior(run / "posterior.safetensors")
    assert meta["step"] == "4" and meta["checkpoint"] == "step_00000004.safetensors" and meta["seed"] == "1"
    return run


def test_fit_posterior_cli_writes_the_file_for_the_newest_checkpoint(fitted):
    mix, meta = read_posterior(fitted / "posterior.safetensors")
    assert mix.k == 4 and mix.nz == 8 and meta["points"] == "200" and meta["kind"] == "gmm"


def test_training_and_fit_posterior_keep_the_aggregate_posterior_by_default(run, tmp_path):
    summary = json.loads((run / "summary.json").read_text())["posterior"]
    assert summary["kind"] == "aggregate" and summary["components"] == summary["points"]
    copy = tmp_path / "run"
    import shutil
    shutil.copytree(run, copy)
    r = invoke("fit-posterior", copy, "--points", "30", "--device", "cpu")
    assert r.exit_code == 0 and "the aggregate posterior of 30 encoded ground truths" in r.output, r.output
    mix, meta = read_posterior(copy / "posterior.safetensors")
    assert mix.k == 30 and meta["kind"] == "aggregate" and meta["points"] == "30"
    assert torch.equal(mix.covariances[0], torch.diag(torch.diagonal(mix.covariances[0])))  # diagonal, per image


def test_sample_with_the_posterior_says_so_and_is_seeded(fitted, tmp_path):
    outs = []
    for i in range(2):
        r = invoke("sample", "--checkpoint", fitted, "--out", tmp_path / f"o{i}", "--samples", "3", "--inputs", "2",
                   "--z-source", "posterior", "--temperature", "0.8", "--seed", "5", "--device", "cpu")
        assert r.exit_code == 0, r.output
        assert "z-source posterior" in r.output and "temperature 0.8" in r.output
        outs.append((tmp_path / f"o{i}" / "grid.png").read_bytes())
    assert outs[0] == outs[1]
    r = invoke("sample", "--checkpoint", fitted, "--out", tmp_path / "p", "--samples", "2", "--inputs", "1",
               "--z-source", "prior", "--device", "cpu")
    assert r.exit_code == 0 and "z-source prior" in r.output


def test_sample_takes_the_runs_posterior_by_default_and_says_which(fitted, run, tmp_path):
    r = invoke("sample", "--checkpoint", fitted, "--out", tmp_path / "a", "--samples", "2", "--inputs", "1", "--device", "cpu")
    assert r.exit_code == 0 and "z-source posterior" in r.output and str(fitted / "posterior.safetensors") in r.output
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(run / "checkpoints", bare / "checkpoints")
    r = invoke("sample", "--checkpoint", bare, "--out", tmp_path / "b", "--samples", "2", "--inputs", "1", "--device", "cpu")
    assert r.exit_code == 0 and "z-source prior" in r.output and "auto: no posterior fitted" in r.output, r.output
    weights = tmp_path / "w.safetensors"
    assert invoke("export", fitted, "--out", weights).exit_code == 0
    r = invoke("sample", "--checkpoint", weights, "--out", tmp_path / "c", "--samples", "2", "--inputs", "1",
               "--device", "cpu")
    assert r.exit_code == 0 and f"Gaussians, {weights} (z-source posterior)" in r.output, r.output  # the exported file


def test_eval_json_names_the_z_source(fitted, tmp_path):
    out = tmp_path / "e.json"
    r = invoke("eval", "--checkpoint", fitted, "--inputs", "3", "--samples", "2", "--z-source", "posterior",
               "--temperature", "0.5", "--json", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["z_source"] == "posterior"
    assert doc["protocol"]["z_source"] == "posterior" and doc["protocol"]["temperature"] == 0.5
    assert "aggregate posterior" in doc["protocol"]["z"] and "4 Gaussians" in doc["protocol"]["z"]
    out2 = tmp_path / "prior.json"
    assert invoke("eval", "--checkpoint", fitted, "--inputs", "2", "--samples", "2", "--json", out2,
                  "--device", "cpu").exit_code == 0
    prior = json.loads(out2.read_text())
    assert prior["z_source"] == "prior" and prior["protocol"]["z_source"] == "prior"
    both = prior["by_z_source"]  # the prior at the top, as the paper; both sources side by side
    assert set(both) == {"prior", "posterior"} and both["prior"]["prior_coverage"] == prior["prior_coverage"]
    assert both["posterior"]["diversity_pixel_l1"] != prior["diversity_pixel_l1"]
    assert doc["by_z_source"]["posterior"]["diversity_pixel_l1"] == doc["diversity_pixel_l1"]


def test_a_missing_posterior_is_one_line_naming_fit_posterior(run, tmp_path):
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(run / "checkpoints", bare / "checkpoints")
    for args in (["sample", "--checkpoint", bare, "--out", tmp_path / "o", "--samples", "2", "--inputs", "1"],
                 ["eval", "--checkpoint", bare, "--inputs", "2", "--samples", "2"]):
        r = invoke(*args, "--z-source", "posterior", "--device", "cpu", catch=True)
        assert r.exit_code != 0 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
        lines = r.output.strip().splitlines()
        assert len(lines) in (1, 2) and f"bicycle fit-posterior {bare}" in lines[-1], r.output  # sample echoes the checkpoint first
        assert "Traceback" not in r.output
    r = invoke("sample", "--checkpoint", bare, "--out", tmp_path / "o", "--z-source", "posterior", "--temperature", "0",
               catch=True)
    assert r.exit_code == 2 and "--temperature" in r.output


def test_a_stale_posterior_names_both_steps(run, tmp_path):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoints", other / "checkpoints")
    x, _, _ = known_mixture(400)
    mix = fit_gmm(torch.cat([x] * 4, 1), 2, seed=0)  # nz 8
    save_posterior(posterior_path(other), mix, "step_00000002.safetensors", 2, 400, 0)
    r = invoke("eval", "--checkpoint", other, "--inputs", "2", "--samples", "2", "--z-source", "posterior",
               "--device", "cpu", catch=True)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "step 2" in r.output and "step 4" in r.output and f"bicycle fit-posterior {other}" in r.output


def test_translate_from_the_posterior_is_seeded_and_exported_weights_carry_it(fitted, run, tmp_path):
    model = bicycle.load(fitted, device="cpu")
    x = torch.zeros(1, 32, 32) - 1
    x[:, 8:24, 8:24] = 1
    a = model.translate(x, n=4, seed=3, z_source="posterior", tensors=True)
    assert torch.equal(a, model.translate(x, n=4, seed=3, z_source="posterior", tensors=True))
    assert not torch.equal(a, model.translate(x, n=4, seed=3, z_source="prior", tensors=True))
    assert torch.equal(a, model.translate(x, n=4, seed=3, tensors=True))  # auto: the run's posterior
    z = model.random_z(3, 4, seed=9, z_source="posterior", temperature=0.7)
    assert z.shape == (3, 4, 8) and torch.equal(z[:1], model.random_z(1, 4, seed=9, z_source="posterior", temperature=0.7))
    assert torch.equal(model.random_z(2, 3, seed=1), torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError):
        model.random_z(1, 1, seed=0, z_source="prio")
    weights = tmp_path / "w.safetensors"
    r = invoke("export", fitted, "--out", weights, "--dtype", "fp16")
    assert r.exit_code == 0 and "with the run's posterior (4 components)" in r.output, r.output
    exported = bicycle.load(weights, device="cpu")
    assert torch.equal(exported.random_z(2, 3, seed=4, z_source="posterior"), model.random_z(2, 3, seed=4, z_source="posterior"))
    again = tmp_path / "again.safetensors"  # exported weights export again with their posterior
    assert invoke("export", weights, "--out", again).exit_code == 0
    assert torch.equal(bicycle.load(again, device="cpu").random_z(1, 2, seed=0, z_source="posterior"),
                       model.random_z(1, 2, seed=0, z_source="posterior"))
    e = tmp_path / "e.json"
    assert invoke("eval", "--checkpoint", weights, "--inputs", "2", "--samples", "2", "--z-source", "posterior",
                  "--json", e, "--device", "cpu").exit_code == 0
    assert json.loads(e.read_text())["z_source"] == "posterior"
    import shutil
    bare = tmp_path / "bare"
    shutil.copytree(run / "checkpoints", bare / "checkpoints")
    plain = tmp_path / "plain.safetensors"
    r = invoke("export", bare, "--out", plain)
    assert r.exit_code == 0 and "no posterior" in r.output
    with pytest.raises(CheckpointError, match="plain.safetensors.*without a posterior"):
        bicycle.load(plain, device="cpu").translate(x, n=2, seed=0, z_source="posterior")


def test_pix2pix_has_no_posterior_to_fit(tmp_path):
    run = tmp_path / "p2p"
    assert invoke("train", *TINY, "--model", "pix2pix", "--steps", "2", "--run-dir", run).exit_code == 0
    assert not (run / "posterior.safetensors").exists()
    r = invoke("fit-posterior", run, "--device", "cpu", catch=True)
    assert r.exit_code != 0 and "no encoder" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_run_stopped_early_has_a_posterior_for_its_latest_checkpoint(tmp_path, monkeypatch):
    """--z-source auto (the default sampler) finds a mixture fitted for the newest checkpoint of an interrupted run,
    fitted with the encoder the run samples with (the moving average when kept)."""
    from bicycle.inference.model import load
    from bicycle.train import loop
    from tiny import spy_kl_scales, tiny_config

    cfg = tiny_config(**{"train.steps": 6, "train.checkpoint_every": 100, "train.ema": 0.9})
    spy_kl_scales(monkeypatch, interrupt_after=3)
    result = loop.train(cfg, tmp_path / "run", echo=lambda _m: None)
    assert result.interrupted and result.step == 3
    model = load(tmp_path / "run", device="cpu")
    source = model.z_source("auto")
    assert source.name == "posterior" and source.origin == tmp_path / "run" / "posterior.safetensors"
    assert model.step == 3
