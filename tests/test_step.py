"""The bicycle step's properties (design §1), pinned."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bicycle.kernels.lsgan import lsgan_ref
from bicycle.build import build_dataset, resolve
from bicycle.losses import LossSetup
from bicycle.models import MODELS, draw_noise
from bicycle.nets import call_twice
from bicycle.plugins import get_plugins
from bicycle.train.state import build_state
from bicycle.train.step import train_step
from tiny import tiny_config


def make_state(model: str = "bicycle", **over):
    cfg = tiny_config(**{"train.model": model, **over})
    reg = get_plugins().registry
    ds = build_dataset(cfg, reg, "train")
    cfg = resolve(cfg, reg, ds)
    state = build_state(cfg, reg, "cpu")
    a, b = ds.get_batch([0, 1, 2, 3])
    torch.manual_seed(1)
    noise = draw_noise(state.model, 4, cfg.net.nz, "cpu")
    return state, a, b, noise, cfg


def _ge_grads(state, a, b, noise):
    ge = state.model.losses(state.nets, a, b, noise, state.loss_setup)
    for _, m in state.nets.items():
        m.zero_grad(set_to_none=True)
    ge.loss.backward()
    grads = {name: [p.grad.clone() if p.grad is not None else None for p in m.parameters()] for name, m in state.nets.items()}
    return ge, grads


def test_kl_is_a_sum_not_a_mean():
    state, a, b, noise, cfg = make_state()
    mu, logvar = state.nets.E(b[:2])
    ge = state.model.losses(state.nets, a, b, noise, state.loss_setup)
    expected = -0.5 * cfg.loss.kl * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    torch.testing.assert_close(ge.metrics["kl"], expected)


def test_latent_loss_changes_g_gradients_and_never_e():
    state, a, b, noise, cfg = make_state()
    from dataclasses import replace
    _, with_z = _ge_grads(state, a, b, noise)
    state.loss_setup = LossSetup(replace(cfg.loss, z=0.0), "lsgan", "ref")
    _, without_z = _ge_grads(state, a, b, noise)
    for g1, g2 in zip(with_z["E"], without_z["E"]):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert any((g1 - g2).abs().max() > 0 for g1, g2 in zip(with_z["G"], without_z["G"]) if g1 is not None)
    # and the G/E update sends nothing to the discriminators
    assert all(g is None for g in with_z["D"] + with_z["D2"])


def test_discriminator_loss_is_fake_plus_real_on_the_same_detached_fakes_and_weights():
    state, a, b, noise, _ = make_state()
    seen: dict[str, list] = {"D": [], "D2": []}
    for name in ("D", "D2"):
        disc = getattr(state.nets, name)
        disc.register_forward_hook(lambda m, inp, out, name=name: seen[name].append(
            (inp[0].detach().clone(), inp[0].requires_grad, [p.detach().clone() for p in m.parameters()],
             [o.detach().clone() for o in out])))
    metrics = train_step(state, a, b, noise)
    for name, real in (("D", b[:2]), ("D2", b[2:])):
        # instance norm: the D update is one call on [fakes; reals] (models.call_twice)
        (fake_ge, grad_ge, w_ge, _), (both, grad_d, w_d, out_both) = seen[name]
        n = fake_ge.shape[0]
        assert grad_ge and not grad_d, "the D update must see detached fakes"
        torch.testing.assert_close(both[:n], fake_ge, rtol=0, atol=0)
        for p1, p2 in zip(w_ge, w_d):
            torch.testing.assert_close(p1, p2, rtol=0, atol=0)
        torch.testing.assert_close(both[n:], real, rtol=0, atol=0)
        # fake + real, no 0.5
        expected = lsgan_ref([o[:n] for o in out_both], 0.0) + lsgan_ref([o[n:] for o in out_both], 1.0)
        torch.testing.assert_close(metrics[name], expected)


def test_g_and_e_step_before_d_and_d2():
    state, a, b, noise, _ = make_state()
    order = []
    for name, opt in state.optimizers.items():
        opt.register_step_post_hook(lambda o, args, kwargs, name=name: order.append(name))
    train_step(state, a, b, noise)
    assert order == ["E", "G", "D", "D2"]


def test_fake_random_is_conditioned_on_a1():
    state, a, b, noise, _ = make_state()
    calls = []
    state.nets.G.register_forward_hook(lambda m, inp, out: calls.append((inp[0].detach().clone(), inp[1].detach().clone())))
    train_step(state, a, b, noise)
    (a_both, z_both), = calls  # one call on [A1, z_enc; A1, z_rand] (instance norm: models.call_twice)
    torch.testing.assert_close(a_both[:2], a[:2])
    torch.testing.assert_close(a_both[2:], a[:2])  # A1, not A2
    torch.testing.assert_close(z_both[2:], noise["z"])


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_merged_calls_compute_what_separate_calls_do(norm):
    """call_twice merges two calls only when the network treats samples independently; with BatchNorm
    (batch statistics) it makes two calls, as the paper's code does."""
    state, a, b, noise, _ = make_state(**{"net.norm": norm})
    G, D = state.nets.G, state.nets.D
    calls = []
    for net in (G, D):
        net.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    z1, z2 = noise["eps"], noise["z"]
    torch.manual_seed(2)
    g1, g2 = G(a[:2], z1), G(a[:2], z2)
    d1, d2 = D(b[:2]), D(b[2:])
    calls.clear()
    torch.manual_seed(2)
    m1, m2 = call_twice(G, (a[:2], z1), (a[:2], z2))
    n1, n2 = call_twice(D, (b[:2],), (b[2:],))
    assert calls == ([4, 4] if norm == "instance" else [2, 2, 2, 2])
    torch.testing.assert_close(m1, g1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m2, g2, rtol=1e-5, atol=1e-5)
    for got, want in ((n1, d1), (n2, d2)):
        assert len(got) == len(want) == len(D.nets)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


class _HostSyncGuard(TorchDispatchMode):
    """Records (op, shapes) and fails on ops that read tensor values on the host or have
    data-dependent shapes (both break CUDA-graph capture)."""

    FORBIDDEN = ("_local_scalar_dense", "equal", "nonzero", "masked_select", "unique", "item")

    def __init__(self, optimizers):
        super().__init__()
        self.trace = []
        self.in_optimizer = False
        for opt in optimizers:  # torch's CPU Adam reads its step counter on the host; on CUDA the
            # optimizers are built capturable (device-side step), so only that read is allowed here.
            opt.register_step_pre_hook(lambda *a: setattr(self, "in_optimizer", True))
            opt.register_step_post_hook(lambda *a: setattr(self, "in_optimizer", False))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        allowed = self.in_optimizer and name == "_local_scalar_dense"
        if not allowed and any(name.startswith(f) for f in self.FORBIDDEN):
            raise AssertionError(f"host synchronisation or dynamic shape in the step: aten.{name}")
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(x.shape) for x in args if isinstance(x, torch.Tensor))
        self.trace.append((name, shapes))
        return out


@pytest.mark.parametrize("model", sorted(MODELS))
def test_step_has_no_host_sync_and_static_shapes(model):
    state, a, b, noise, cfg = make_state(model)
    train_step(state, a, b, noise)  # the first step creates the optimizer state
    traces = []
    for i in range(2):
        a_i, b_i = a.roll(i, 0), b.roll(i, 0)
        noise_i = draw_noise(state.model, 4, cfg.net.nz, "cpu")
        guard = _HostSyncGuard(state.optimizers.values())
        with guard:
            metrics = train_step(state, a_i, b_i, noise_i)
        traces.append(guard.trace)
        assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    assert traces[0] == traces[1], "two steps with different data must run the same ops on the same shapes"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_the_networks_it_documents(model):
    state, a, b, noise, _ = make_state(model)
    before = {name: copy.deepcopy(m.state_dict()) for name, m in state.nets.items()}
    metrics = train_step(state, a, b, noise)
    assert all(torch.isfinite(v) for v in metrics.values())
    expected = {"bicycle": {"G", "E", "D", "D2"}, "pix2pix": {"G", "D"}, "cae-gan": {"G", "E", "D"},
                "cvae-gan": {"G", "E", "D"}, "clr-gan": {"G", "E", "D"}}[model]
    assert {name for name, _ in state.nets.items()} == expected
    for name, m in state.nets.items():
        changed = any(not torch.equal(before[name][k], v) for k, v in m.state_dict().items())
        assert changed, f"{model}: {name} was not updated"


def test_clr_gan_latent_loss_trains_e():
    state, a, b, noise, _ = make_state("clr-gan")
    _, grads = _ge_grads(state, a, b, noise)
    assert any(g is not None and g.abs().max() > 0 for g in grads["E"])
