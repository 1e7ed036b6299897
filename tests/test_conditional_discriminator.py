"""``--conditional-d``: D and D2 judge the input A beside B (the original's --conditional_D), for every model."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bicycle.cli import main
from bicycle.models import MODELS, draw_noise
from bicycle.train.step import train_step
from tiny import tiny_state


def _spy_inputs(net: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_each_discriminator_sees_the_input_of_its_own_pair():
    state, a, b, cfg = tiny_state(**{"net.conditional_d": True})
    ca, cb, half = a.shape[1], b.shape[1], a.shape[0] // 2
    seen = {"D": _spy_inputs(state.nets.D), "D2": _spy_inputs(state.nets.D2)}
    train_step(state, a, b, draw_noise(state.model, a.shape[0], cfg.net.nz, "cpu"))
    pairs = torch.cat([a, b], 1)
    for name, inputs in seen.items():
        assert all(x.shape[1] == ca + cb for x in inputs)
        assert torch.equal(inputs[0][:, :ca], a[:half])  # G's update: both fakes are G(A1, .)
        judged = torch.cat(inputs[1:])  # D's own update: (fake, real), in one call or two
        assert torch.equal(judged[:half, :ca], a[:half])
        assert torch.equal(judged[half:], pairs[:half] if name == "D" else pairs[half:])


def test_off_by_default_the_discriminators_see_b_alone():
    state, a, b, cfg = tiny_state()
    seen = _spy_inputs(state.nets.D2)
    train_step(state, a, b, draw_noise(state.model, a.shape[0], cfg.net.nz, "cpu"))
    assert all(x.shape[1] == b.shape[1] for x in seen)
    assert torch.equal(torch.cat(seen[1:])[a.shape[0] // 2:], b[a.shape[0] // 2:])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_with_a_conditional_discriminator(model):
    state, a, b, cfg = tiny_state(**{"net.conditional_d": True, "train.model": model})
    before = [p.detach().clone() for p in state.nets.D.parameters()]
    losses = train_step(state, a, b, draw_noise(state.model, a.shape[0], cfg.net.nz, "cpu"))
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(p, q) for p, q in zip(before, state.nets.D.parameters()))


def test_the_flag_sets_the_config_key():
    out = CliRunner().invoke(main, ["train", "--conditional-d", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert '"conditional_d": true' in out.output


@pytest.mark.gpu
def test_gpu_conditional_discriminator_under_replay():
    from bicycle.train.graph import GraphedStep

    state, a, b, cfg = tiny_state("cuda", **{"net.image_size": 64, "train.impl": "auto", "net.conditional_d": True})
    g = GraphedStep(state, tuple(a.shape), tuple(b.shape), cfg.net.nz, "cuda", warmup=1)
    for _ in range(2):
        g.step(a, b)
    assert g.captured
    assert all(torch.isfinite(v).all() for v in g.replay().values())
