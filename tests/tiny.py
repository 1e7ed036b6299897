"""Tiny configurations for fast CPU tests."""
from __future__ import annotations

from bicycle.config import PRESETS, RunConfig, replace


def tiny_config(**overrides) -> RunConfig:
    base = {"net.image_size": 32, "net.ngf": 8, "net.nef": 8, "net.ndf": 8, "train.batch_size": 4,
            "train.steps": 4, "train.log_every": 2, "train.sample_every": 2, "train.checkpoint_every": 2,
            "net.dropout": False, "train.impl": "ref"}
    base.update(overrides)
    return replace(PRESETS["demo"], base)


def spy_kl_scales(monkeypatch, interrupt_after: int | None = None) -> list[float | None]:
    """Record lambda_KL's warm-up factor (None: no warm-up) seen by every step of ``bicycle.train.loop.train``;
    with ``interrupt_after``, send a Ctrl-C (SIGINT) right after that many steps, as a user would."""
    import os
    import signal

    import bicycle.train.graph as graph

    seen: list[float | None] = []
    real = graph.train_step

    def step(state, *args, **kwargs):
        out = real(state, *args, **kwargs)
        s = state.loss_setup.kl_scale
        seen.append(None if s is None else float(s))
        if len(seen) == interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(graph, "train_step", step)
    return seen


def tiny_state(device: str = "cpu", **overrides):
    """(TrainState, A, B, resolved config) for ``tiny_config(**overrides)``, with one batch of 4 on ``device``."""
    from bicycle.build import build_dataset, resolve
    from bicycle.plugins import get_plugins
    from bicycle.train.state import build_state

    cfg = tiny_config(**overrides)
    reg = get_plugins().registry
    ds = build_dataset(cfg, reg, "train")
    cfg = resolve(cfg, reg, ds)
    a, b = (t.to(device) for t in ds.get_batch([0, 1, 2, 3]))
    return build_state(cfg, reg, device), a, b, cfg
