"""Mode seeking (``loss.mode_seeking``, MSGAN): an optional term on the random-z branch of the bicycle model."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bicycle.cli import main
from bicycle.config import PRESETS, ConfigError, replace, validate
from bicycle.losses import mode_seeking
from test_step import make_state


def test_the_term_is_small_when_outputs_differ_as_much_as_their_codes():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    out = torch.randn(2, 3, 8, 8, generator=g)
    ratio = float(torch.mean(torch.abs(out - 0.5 * out)) / torch.mean(torch.abs(z1 - z2)))
    assert float(mode_seeking(out, 0.5 * out, z1, z2)) == pytest.approx(1 / (ratio + 1e-5))
    assert float(mode_seeking(out, out, z1, z2)) == pytest.approx(1e5)  # G ignoring z: the largest value


def test_off_by_default_and_on_it_adds_its_weighted_term_and_reaches_g_only():
    state, a, b, noise, _ = make_state()
    off = state.model.losses(state.nets, a, b, noise, state.loss_setup)
    assert "ms" not in off.metrics and PRESETS["demo"].loss.mode_seeking == 0 == PRESETS["paper"].loss.mode_seeking
    on_state, a, b, noise, _ = make_state(**{"loss.mode_seeking": 0.5})
    on = on_state.model.losses(on_state.nets, a, b, noise, on_state.loss_setup)
    assert float(on.metrics["ms"].detach()) > 0
    torch.testing.assert_close(on.loss, off.loss + on.metrics["ms"])
    # the term's gradient: G's parameters only (the encoded output and code are detached)
    nets = on_state.nets
    for _, m in nets.items():
        m.zero_grad(set_to_none=True)
    on.metrics["ms"].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in nets.E.parameters())
    assert any(p.grad is not None and p.grad.any() for p in nets.G.parameters())


@pytest.mark.parametrize("model", ["cvae-gan", "clr-gan", "pix2pix"])
def test_other_models_refuse_it_in_one_line(model):
    with pytest.raises(ConfigError, match="loss.mode_seeking compares the encoded and random-z outputs"):
        validate(replace(PRESETS["demo"], {"train.model": model, "loss.mode_seeking": 1.0}))
    r = CliRunner().invoke(main, ["train", "--model", model, "--lambda-ms", "1", "--dry-run"])
    assert r.exit_code == 2 and "has no such pair" in r.output


def test_cli_flag_reaches_the_config_and_must_not_be_negative():
    r = CliRunner().invoke(main, ["train", "--lambda-ms", "0.5", "--dry-run"])
    assert r.exit_code == 0 and '"mode_seeking": 0.5' in r.output
    r = CliRunner().invoke(main, ["train", "--lambda-ms", "-1", "--dry-run"])
    assert r.exit_code == 2 and "loss.mode_seeking must not be negative" in r.output
