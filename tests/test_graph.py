"""CUDA-graph training step (bicycle.train.graph) and its options.

CPU tests: option validation and plumbing, the lr-tensor schedule, static buffers and noise, and the
GraphedStep code path run eagerly (capture=False). GPU tests (@pytest.mark.gpu, skipped without
CUDA): the issue's properties (i)-(v) of the graph-replayed step.
"""
from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import replace as dc_replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bicycle.cli import main
from bicycle.config import PRESETS, RESUMABLE_KEYS, replace, validate
from bicycle.errors import ConfigError
from bicycle.build import build_dataset, resolve
from bicycle.losses import LossSetup
from bicycle.models import draw_noise
from bicycle.plugins import get_plugins
from bicycle.train.execution import (CPU_EAGER_MESSAGE, autocast, check_cuda_graphs, memory_format, prepare_networks,
                                     use_cuda_graphs)
from bicycle.train.checkpoints import host_lrs
from bicycle.train.graph import CAPTURE_ERROR_MODE, GraphedStep, capturing, lr_tensors, set_lr
from bicycle.train.schedule import lr_factor
from bicycle.train.state import build_state
from bicycle.train.step import train_step
from tiny import tiny_config

CPU = torch.device("cpu")


# -- options --------------------------------------------------------------------------------------

def test_config_fields_defaults_and_validation():
    t = PRESETS["demo"].train
    assert t.cuda_graphs is None and t.precision == "fp32" and t.compile is False
    assert {"train.cuda_graphs", "train.precision", "train.compile"} <= RESUMABLE_KEYS
    cfg = replace(PRESETS["demo"], {"train.precision": "bf16", "train.cuda_graphs": False, "train.compile": True})
    assert validate(cfg).train.precision == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        validate(replace(PRESETS["demo"], {"train.precision": "fp16"}))


def test_every_capture_runs_in_thread_local_error_mode(monkeypatch):
    """The prefetch thread pins memory while the step is captured: a global-mode capture would be invalidated
    by that thread's CUDA calls. Every capture goes through ``capturing``, which asks for thread_local."""
    seen = {}
    monkeypatch.setattr(torch.cuda, "graph", lambda graph, **kw: seen.update(kw) or "ctx")
    assert capturing("g") == "ctx" and seen == {"capture_error_mode": "thread_local"} == {"capture_error_mode": CAPTURE_ERROR_MODE}
    root = Path(__file__).resolve().parents[1]
    direct = [f"{p.relative_to(root)}:{i}" for folder in ("bicycle", "kernels", "benchmarks", "experiments", "tools", "tests", "plugins")
              for p in (root / folder).rglob("*.py") if p.name != "test_graph.py"
              for i, line in enumerate(p.read_text().splitlines(), 1)
              if "torch.cuda.graph(" in line and not line.lstrip().startswith(('"', "#", "return torch.cuda.graph("))]
    assert direct == [], f"captures that bypass bicycle.train.graph.capturing: {direct}"


def test_use_cuda_graphs_decisions():
    cuda = torch.device("cuda")
    assert use_cuda_graphs(None, CPU) == (False, CPU_EAGER_MESSAGE)
    assert use_cuda_graphs(False, CPU) == (False, None)
    assert use_cuda_graphs(None, cuda) == (True, None)
    assert use_cuda_graphs(False, cuda) == (False, None)
    assert use_cuda_graphs(True, cuda) == (True, None)
    with pytest.raises(ConfigError, match="--cuda-graphs needs a CUDA device"):
        use_cuda_graphs(True, CPU)
    check_cuda_graphs(None, CPU)


def test_cli_explicit_cuda_graphs_on_cpu_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(main, ["train", "--device", "cpu", "--cuda-graphs", "--dry-run"])
    assert r.exit_code == 2, r.output
    assert "--cuda-graphs needs a CUDA device" in r.output


def test_cli_flags_reach_the_config():
    r = CliRunner().invoke(main, ["train", "--device", "cpu", "--no-cuda-graphs", "--precision", "bf16", "--compile",
                                  "--dry-run"])
    assert r.exit_code == 0, r.output
    assert '"cuda_graphs": false' in r.output and '"precision": "bf16"' in r.output and '"compile": true' in r.output
    r = CliRunner().invoke(main, ["train", "--device", "cpu", "--dry-run"])
    assert '"cuda_graphs": null' in r.output and '"precision": "fp32"' in r.output and '"compile": false' in r.output
    r = CliRunner().invoke(main, ["train", "--precision", "fp16", "--dry-run"])
    assert r.exit_code == 2


def test_training_on_cpu_says_eager_once(tmp_path):
    args = ["train", "--device", "cpu", "--steps", "3", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8",
            "--batch-size", "4", "--log-every", "1", "--sample-every", "100", "--checkpoint-every", "100",
            "--run-dir", str(tmp_path / "run"), "--impl", "ref"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.output.count(CPU_EAGER_MESSAGE) == 1
    r = CliRunner().invoke(main, args[:-4] + ["--run-dir", str(tmp_path / "run2"), "--no-cuda-graphs"])
    assert r.exit_code == 0, r.output
    assert CPU_EAGER_MESSAGE not in r.output


def test_autocast_and_memory_format_plumbing():
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ConfigError):
        autocast(CPU, "fp16")
    assert memory_format("bf16") == torch.channels_last and memory_format("fp32") == torch.contiguous_format


def test_prepare_networks_channels_last_and_compile(monkeypatch):
    state, *_ = _state()
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    prepare_networks(state.nets, "bf16", compile=True)
    assert len(compiled) == 4
    w = next(p for p in state.nets.G.parameters() if p.dim() == 4)
    assert w.is_contiguous(memory_format=torch.channels_last)
    keys = set(state.nets.G.state_dict())
    assert not any(k.startswith("_orig_mod") for k in keys)


# -- learning-rate tensors --------------------------------------------------------------------------

def _state(model: str = "bicycle", **over):
    cfg = tiny_config(**{"train.model": model, **over})
    reg = get_plugins().registry
    ds = build_dataset(cfg, reg, "train")
    cfg = resolve(cfg, reg, ds)
    state = build_state(cfg, reg, "cpu")
    a, b = ds.get_batch([0, 1, 2, 3])
    return state, a, b, cfg


def test_lr_tensors_follow_the_schedule_and_stay_the_same_objects():
    state, _, _, cfg = _state()
    lrs = lr_tensors(state.optimizers, CPU)
    assert set(lrs) == set(state.optimizers)
    ids = {k: [id(t) for t in v] for k, v in lrs.items()}
    assert lr_tensors(state.optimizers, CPU) == lrs  # idempotent: the same tensors
    base = {k: cfg.optim.lr for k in lrs}
    total = 10
    for step in range(total):
        f = lr_factor(step, total, 0.5)
        set_lr(lrs, base, f)
        for k, opt in state.optimizers.items():
            for g in opt.param_groups:
                assert isinstance(g["lr"], torch.Tensor) and id(g["lr"]) in ids[k]
                assert float(g["lr"]) == pytest.approx(cfg.optim.lr * f, rel=1e-6)


def test_host_lrs_for_checkpoints_puts_the_same_tensors_back():
    state, *_ = _state()
    lrs = lr_tensors(state.optimizers, CPU)
    set_lr(lrs, {k: 1e-3 for k in lrs}, 0.5)
    with host_lrs(state.optimizers):
        sd = state.optimizers["G"].state_dict()
        assert sd["param_groups"][0]["lr"] == pytest.approx(5e-4)
        import json
        json.dumps(sd["param_groups"])
    assert state.optimizers["G"].param_groups[0]["lr"] is lrs["G"][0]


def test_tensor_lr_scales_the_update():
    """The update an optimizer makes with lr tensor = x follows x (CPU Adam; capturable Adam on GPU below)."""
    deltas = {}
    for factor in (1.0, 0.5):
        state, a, b, cfg = _state()
        lrs = lr_tensors(state.optimizers, CPU)
        set_lr(lrs, {k: cfg.optim.lr for k in lrs}, factor)
        before = [p.detach().clone() for p in state.nets.G.parameters()]
        torch.manual_seed(3)
        train_step(state, a, b, draw_noise(state.model, 4, cfg.net.nz, "cpu"))
        deltas[factor] = [p.detach() - q for p, q in zip(state.nets.G.parameters(), before)]
    for d1, dh in zip(deltas[1.0], deltas[0.5]):
        torch.testing.assert_close(dh, 0.5 * d1, rtol=1e-4, atol=1e-9)


# -- GraphedStep, eager code path ---------------------------------------------------------------------

def test_graphed_step_eager_path_matches_train_step():
    """capture=False runs the same body: static buffers, device lrs, static noise -> same update as train_step."""
    s1, a, b, cfg = _state()
    s2 = copy.deepcopy(s1)
    s2.optimizers = {k: type(o)(getattr(s2.nets, k).parameters(), **{**o.defaults}) for k, o in s1.optimizers.items()}
    noise = draw_noise(s1.model, 4, cfg.net.nz, "cpu")
    g = GraphedStep(s1, tuple(a.shape), tuple(b.shape), cfg.net.nz, CPU, {k: cfg.optim.lr for k in s1.optimizers},
                    noise="static", capture=False)
    assert not g.captured and g.a.shape == a.shape
    g.set_lr_factor(1.0)
    g.set_noise(noise)
    m1 = g.step(a, b)
    torch.testing.assert_close(g.a, a, rtol=0, atol=0)
    assert g.noise is g.static_noise
    m2 = train_step(s2, a, b, noise)
    for k in m2:
        torch.testing.assert_close(m1[k], m2[k], rtol=1e-5, atol=1e-6)
    for p, q in zip(s1.nets.G.parameters(), s2.nets.G.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert not g.captured and g.calls == 1


def test_graphed_step_draws_fresh_noise_each_call_and_checks_shapes():
    s, a, b, cfg = _state()
    g = GraphedStep(s, tuple(a.shape), tuple(b.shape), cfg.net.nz, CPU, {k: 2e-4 for k in s.optimizers}, capture=False)
    g.step(a, b)
    first = {k: v.clone() for k, v in g.noise.items()}
    assert set(first) == {"eps", "z"} and first["z"].shape == (2, cfg.net.nz)
    g.step(a, b)
    assert not torch.equal(first["z"], g.noise["z"])
    with pytest.raises(ValueError, match="batch size must stay fixed"):
        g.load(a[:2], b[:2])
    with pytest.raises(RuntimeError, match="noise='static'"):
        g.set_noise(first)


def test_graphed_step_uint8_load_and_cpu_capture_refused():
    s, a, b, cfg = _state()
    g = GraphedStep(s, tuple(a.shape), tuple(b.shape), cfg.net.nz, CPU, {k: 2e-4 for k in s.optimizers}, capture=False)
    u8 = torch.tensor([0, 255, 51], dtype=torch.uint8).repeat(a.numel() // 3 + 1)[: a.numel()].view(a.shape)
    g.load_uint8(u8, u8)
    assert g.a.min() == -1.0 and g.a.max() == 1.0 and g.a.dtype == torch.float32
    with pytest.raises(ConfigError, match="CUDA"):
        GraphedStep(s, tuple(a.shape), tuple(b.shape), cfg.net.nz, CPU, {}, capture=True)


def test_graphed_step_bf16_eager_path_runs():
    s, a, b, cfg = _state()
    prepare_networks(s.nets, "bf16")
    g = GraphedStep(s, tuple(a.shape), tuple(b.shape), cfg.net.nz, CPU, {k: 2e-4 for k in s.optimizers},
                    precision="bf16", capture=False)
    assert g.a.is_contiguous(memory_format=torch.channels_last)
    m = g.step(a, b)
    assert all(torch.isfinite(v) for v in m.values())
    assert {k: v.dtype for k, v in m.items()} == {k: torch.float32 for k in m}  # what the guard and the log read


# -- GPU: properties (i)-(v) of the graph-replayed step -------------------------------------------------

def _gpu_state(model="bicycle", size=64, batch=4, device="cuda", **over):
    cfg = tiny_config(**{"train.model": model, "net.image_size": size, "net.ngf": 16, "net.nef": 16, "net.ndf": 16,
                         "train.batch_size": batch, "net.dropout": True, "train.impl": "auto", **over})
    reg = get_plugins().registry
    ds = build_dataset(cfg, reg, "train")
    cfg = resolve(cfg, reg, ds)
    state = build_state(cfg, reg, device)
    a, b = ds.get_batch(list(range(batch)))
    return state, a.to(device), b.to(device), cfg, ds


@pytest.fixture
def strict_fp32():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
           torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.deterministic) = old


def _snapshot(state):
    params = {n: [p.detach().clone() for p in m.parameters()] for n, m in state.nets.items()}
    opt = {n: {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()} for p, st in o.state.items()}
           for n, o in state.optimizers.items()}
    return params, opt


def _restore(state, snap):
    params, opt = snap
    with torch.no_grad():
        for n, m in state.nets.items():
            for p, saved in zip(m.parameters(), params[n]):
                p.copy_(saved)
        for n, o in state.optimizers.items():
            for p, st in o.state.items():
                for k, v in opt[n][id(p)].items():
                    if torch.is_tensor(v):
                        st[k].copy_(v)


def _captured(state, a, b, cfg, noise="static", warmup=3):
    g = GraphedStep(state, tuple(a.shape), tuple(b.shape), cfg.net.nz, "cuda", {k: cfg.optim.lr for k in state.optimizers},
                    warmup=warmup, noise=noise)
    g.set_lr_factor(1.0)
    if noise == "static":
        g.set_noise(draw_noise(state.model, a.shape[0], cfg.net.nz, "cuda"))
    for _ in range(warmup + 1):
        g.step(a, b)
    assert g.captured
    return g


def _updates(state, snap):
    return {n: [p.detach() - q for p, q in zip(m.parameters(), snap[0][n])] for n, m in state.nets.items()}


@pytest.mark.gpu
def test_gpu_i_replayed_step_equals_eager_step(strict_fp32):
    """(i) identical state + injected noise (eps, z from static buffers; dropout masks from the same Philox
    seed/offset): one replay gives the same parameter updates as one eager train_step (rtol 1e-4, TF32 off)."""
    state, a, b, cfg, _ = _gpu_state()
    g = _captured(state, a, b, cfg)
    noise = draw_noise(state.model, a.shape[0], cfg.net.nz, "cuda")
    g.set_noise(noise)
    snap = _snapshot(state)
    torch.cuda.manual_seed(1234)
    eager_metrics = {k: v.clone() for k, v in train_step(state, g.a, g.b, g.static_noise).items()}
    eager = _updates(state, snap)
    _restore(state, snap)
    torch.cuda.manual_seed(1234)
    graph_metrics = g.replay()
    graph = _updates(state, snap)
    for k in eager_metrics:
        torch.testing.assert_close(graph_metrics[k], eager_metrics[k], rtol=1e-4, atol=1e-6)
    lr = cfg.optim.lr
    for n in eager:
        for u_g, u_e in zip(graph[n], eager[n]):
            # rtol 1e-4 of the update; atol 1e-4 of the lr (the size of one Adam update) for entries whose
            # gradient is pure rounding noise (biases before instance norm)
            torch.testing.assert_close(u_g, u_e, rtol=1e-4, atol=1e-4 * lr)


@pytest.fixture
def deterministic(strict_fp32, monkeypatch):
    """Deterministic algorithms where torch has them (warn elsewhere: e.g. adaptive pooling's backward)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # benchmarks/gpu_check.sh also sets it before CUDA starts
    old = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])


def _trajectory(capture: bool, steps: int, device: str = "cuda") -> list[dict[str, float]]:
    """Per-step losses of ``steps`` training steps through GraphedStep, captured and replayed or eager:
    the same initial weights, batches (the loop's stream), schedule and per-step static noise (no dropout)."""
    state, _, _, cfg, ds = _gpu_state(size=32, batch=4, device=device, **{"net.dropout": False})
    from bicycle.train.data import BatchStream
    n, s = cfg.train.batch_size, cfg.net.image_size
    stream = BatchStream(ds, n, 0)
    g = GraphedStep(state, (n, cfg.net.in_channels, s, s), (n, cfg.net.out_channels, s, s), cfg.net.nz, device,
                    {k: cfg.optim.lr for k in state.optimizers}, noise="static", capture=capture)
    out = []
    for step in range(steps):
        g.set_lr_factor(lr_factor(step, steps, 0.5))
        g.set_noise(draw_noise(state.model, n, cfg.net.nz, "cpu", torch.Generator().manual_seed(step)))
        m = g.step(*stream.next())
        out.append({k: float(v) for k, v in m.items()})
    assert g.captured == capture
    return out


def test_trajectory_runs_the_configs_shapes_and_is_reproducible_on_cpu():
    """The (ii) comparison's harness on CPU: the dataset's channels (shapes: 1 -> 3), static per-step noise."""
    first, again = _trajectory(False, 3, "cpu"), _trajectory(False, 3, "cpu")
    assert len(first) == 3 and set(first[0]) == {"G_GAN", "G_GAN2", "G_L1", "kl", "z_L1", "D", "D2"}
    assert first == again


@pytest.mark.gpu
def test_gpu_ii_replayed_losses_track_the_eager_steps(deterministic, record_property):
    """(ii) 200 steps eager vs graph-replayed on the same batches and noise: per-step losses agree to rtol 1e-3
    for the first 20 steps; the drift over 200 steps is recorded (GAN trajectories decorrelate), not asserted."""
    eager, graph = _trajectory(False, 200), _trajectory(True, 200)
    drift = {k: max(abs(g[k] - e[k]) / max(abs(e[k]), 1e-8) for e, g in zip(eager, graph)) for k in eager[0]}
    first_off = next((t for t, (e, g) in enumerate(zip(eager, graph))
                      if any(abs(g[k] - e[k]) > 1e-3 * abs(e[k]) + 1e-6 for k in e)), None)
    record_property("drift_200_steps", json.dumps({"max_rel_diff_per_loss": drift, "first_step_beyond_rtol_1e-3": first_off,
                                                   "final_eager": eager[-1], "final_graph": graph[-1]}))
    for t in range(20):
        for k in eager[t]:
            assert graph[t][k] == pytest.approx(eager[t][k], rel=1e-3, abs=1e-6), (t, k, eager[t], graph[t])


@pytest.mark.gpu
def test_gpu_iii_noise_differs_between_replays():
    state, a, b, cfg, _ = _gpu_state()
    g = _captured(state, a, b, cfg, noise="graph")
    g.replay()
    first = {k: v.clone() for k, v in g.noise.items()}
    g.replay()
    for k, v in g.noise.items():
        assert not torch.equal(first[k], v), f"{k} repeated between replays"


@pytest.mark.gpu
def test_gpu_iv_learning_rate_follows_the_schedule_under_replay(strict_fp32):
    state, a, b, cfg, _ = _gpu_state(**{"net.dropout": False})
    g = _captured(state, a, b, cfg)
    snap = _snapshot(state)
    g.set_lr_factor(1.0)
    g.replay()
    full = _updates(state, snap)
    _restore(state, snap)
    g.set_lr_factor(0.25)
    g.replay()
    quarter = _updates(state, snap)
    for k, ts in g.lrs.items():
        assert all(float(t) == pytest.approx(0.25 * cfg.optim.lr) for t in ts)
    for n in full:
        for uf, uq in zip(full[n], quarter[n]):
            torch.testing.assert_close(uq, 0.25 * uf, rtol=1e-3, atol=1e-4 * cfg.optim.lr)
    # and through the loop's schedule: the lr tensors hold base * lr_factor(step) before each replay
    for step in (0, 50, 75, 99):
        g.set_lr_factor(lr_factor(step, 100, 0.5))
        g.replay()
        assert float(g.lrs["G"][0]) == pytest.approx(cfg.optim.lr * lr_factor(step, 100, 0.5), rel=1e-6)


@pytest.mark.gpu
def test_gpu_v_latent_loss_sends_no_gradient_to_e(strict_fp32):
    """(v) E's gradient in the replayed step equals E's gradient of the objective without the latent term."""
    state, a, b, cfg, _ = _gpu_state()
    g = _captured(state, a, b, cfg)
    noise = draw_noise(state.model, a.shape[0], cfg.net.nz, "cuda")
    g.set_noise(noise)
    snap = _snapshot(state)
    torch.cuda.manual_seed(99)
    g.replay()
    e_graph = [p.grad.clone() for p in state.nets.E.parameters()]
    g_graph = [p.grad.clone() for p in state.nets.G.parameters()]
    _restore(state, snap)
    torch.cuda.manual_seed(99)
    no_z = LossSetup(dc_replace(cfg.loss, z=0.0), cfg.net.gan_mode, "auto")
    ge = state.model.losses(state.nets, g.a, g.b, g.static_noise, no_z)
    e_params, g_params = list(state.nets.E.parameters()), list(state.nets.G.parameters())
    grads = torch.autograd.grad(ge.loss, e_params + g_params, allow_unused=True)
    for got, want in zip(e_graph, grads[:len(e_params)]):
        torch.testing.assert_close(got, want if want is not None else torch.zeros_like(got), rtol=1e-4, atol=1e-7)
    assert any((gg - w).abs().max() > 1e-6 for gg, w in zip(g_graph, grads[len(e_params):]) if w is not None), \
        "the latent loss must still reach G"


@pytest.mark.gpu
def test_gpu_vi_replay_reads_the_refilled_kl_scale(strict_fp32):
    """The lambda_KL warm-up tensor is read inside the graph: refilling it between replays (same state, same
    static noise) scales the replayed KL term exactly."""
    state, a, b, cfg, _ = _gpu_state()
    scale = torch.ones((), device="cuda")
    state.loss_setup = LossSetup(cfg.loss, cfg.net.gan_mode, "auto", scale)
    g = _captured(state, a, b, cfg)
    snap = _snapshot(state)
    full = g.replay()["kl"].clone()
    _restore(state, snap)
    scale.fill_(0.25)
    torch.testing.assert_close(g.replay()["kl"], 0.25 * full, rtol=1e-5, atol=0)


@pytest.mark.gpu
def test_gpu_vii_the_divergence_guard_records_inside_the_captured_graph():
    """A non-finite batch in the static buffers makes the replayed step's losses non-finite: the guard's
    device counters, updated inside the graph, name that step without any host read during replay."""
    state, a, b, cfg, _ = _gpu_state()
    g = _captured(state, a, b, cfg, noise="graph")  # warm-up + capture + one replay: 4 steps
    assert state.guard is not None and state.guard.first_bad() is None and int(state.guard.steps) == 4
    g.replay()
    g.a.fill_(float("nan"))
    g.replay()
    g.replay()
    bad = state.guard.first_bad()
    assert bad is not None and bad.step == 6 and int(state.guard.steps) == 7
    assert bad.losses and all(math.isnan(v) or math.isinf(v) for v in bad.losses.values())


@pytest.mark.gpu
def test_gpu_viii_capture_with_the_prefetch_thread_pinning_batches():
    """The loop's situation: the background prefetcher makes and pins batches while the step is warmed up,
    captured and replayed, and a second thread keeps pinning host memory throughout (so that another
    thread's host-allocator calls surely overlap the capture). The capture must succeed and the replays train."""
    from bicycle.train.data import BatchStream
    from bicycle.train.prefetch import Prefetcher

    state, _, _, cfg, ds = _gpu_state(size=32, batch=4)
    n, s = cfg.train.batch_size, cfg.net.image_size
    g = GraphedStep(state, (n, cfg.net.in_channels, s, s), (n, cfg.net.out_channels, s, s), cfg.net.nz, "cuda",
                    {k: cfg.optim.lr for k in state.optimizers})
    g.set_lr_factor(1.0)
    stop, pinned = threading.Event(), []

    def pin_forever():
        while not stop.is_set():
            pinned.append(torch.empty(1 << 16).pin_memory())  # what the prefetcher does: host allocator calls
            del pinned[:-2]

    pinner = threading.Thread(target=pin_forever, daemon=True)
    pinner.start()
    try:
        with Prefetcher(BatchStream(ds, n, 0), background=True, pin=True, depth=2) as batches:
            for _ in range(g.warmup + 4):
                a, b = batches.next()
                assert a.is_pinned()
                m = g.step(a.to("cuda", non_blocking=True), b.to("cuda", non_blocking=True))
                losses = {k: float(v) for k, v in m.items()}
                assert all(math.isfinite(v) for v in losses.values()), losses
    finally:
        stop.set()
        pinner.join(timeout=10)
    assert g.captured and pinned


def _cuda_train_args(run_dir, *extra):
    return ["train", "--device", "cuda", "--steps", "4", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8",
            "--batch-size", "4", "--log-every", "1", "--sample-every", "100", "--checkpoint-every", "4",
            "--run-dir", str(run_dir), *extra]


@pytest.mark.gpu
@pytest.mark.timeout(240)  # torch.compile's first compilation of G, E and both D
@pytest.mark.parametrize("graphs", ["--no-cuda-graphs", "--cuda-graphs"])
def test_gpu_ix_compile_trains_on_cuda(tmp_path, graphs):
    """--compile on CUDA, eager and inside the captured iteration: trains to the end, finite losses, a checkpoint."""
    r = CliRunner().invoke(main, _cuda_train_args(tmp_path / "run", "--compile", graphs))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
    assert "nan" not in r.output.lower()


@pytest.mark.gpu
def test_gpu_x_bf16_trains_with_channels_last_norms_and_fp32_losses(tmp_path):
    """bf16 + channels_last through the captured step: the instance norms keep the layout (no conversion)
    and the losses the guard and the log read are float32."""
    state, a, b, cfg, _ = _gpu_state(size=32, batch=4, **{"train.precision": "bf16"})
    prepare_networks(state.nets, "bf16")
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
             for m in state.nets.G.modules() if type(m).__name__ == "InstanceNorm"]
    g = GraphedStep(state, tuple(a.shape), tuple(b.shape), cfg.net.nz, "cuda", {k: cfg.optim.lr for k in state.optimizers},
                    precision="bf16")
    g.set_lr_factor(1.0)
    for _ in range(g.warmup + 2):
        metrics = g.step(a, b)
    for h in hooks:
        h.remove()
    assert g.captured and seen and all(seen)
    assert all(v.dtype == torch.float32 and math.isfinite(float(v)) for v in metrics.values()), metrics
    r = CliRunner().invoke(main, _cuda_train_args(tmp_path / "run", "--precision", "bf16"))
    assert r.exit_code == 0, r.output
