"""Rank processes for tests/test_distributed.py (started with torch.multiprocessing, gloo on the CPU)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist

STEPS = 3
B = 4  # per-rank batch (its encoded half: 2 rows)


def config(norm: str = "none"):
    from tiny import tiny_config
    return tiny_config(**{"loss.kl": 0.1, "loss.kl_warmup": 0.0, "net.dropout": False, "train.impl": "ref",
                          "train.batch_size": B, "net.norm": norm})


def inert_biases(nets) -> set[str]:
    """Biases of convolutions followed by a non-affine InstanceNorm: the norm removes them, so their gradient is
    0 analytically and, numerically, rounding noise that Adam scales up to full-size steps in any implementation."""
    out = set()
    for name, net in nets.items():
        for prefix, m in net.named_modules():
            if isinstance(m, torch.nn.Sequential):
                kids = list(m.named_children())
                for (k, conv), (_, nxt) in zip(kids, kids[1:]):
                    if isinstance(nxt, torch.nn.InstanceNorm2d) and getattr(conv, "bias", None) is not None:
                        out.add(f"{name}.{prefix}.{k}.bias".replace("..", "."))
    return out


def global_batches(world: int, norm: str, steps: int = STEPS):
    """The global batches t = 0.. at world * B, and the global noise (eps, z: [world * B / 2, nz] each)."""
    from bicycle.build import build_dataset, resolve
    from bicycle.plugins import get_plugins
    from bicycle.train.data import BatchStream
    cfg = config(norm)
    reg = get_plugins().registry
    ds = build_dataset(cfg, reg, "train")
    cfg = resolve(cfg, reg, ds)
    stream = BatchStream(ds, B * world, cfg.train.seed)
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(steps):
        a, b = stream.next()
        half = world * B // 2
        noise = {k: torch.randn(half, cfg.net.nz, generator=g, dtype=torch.float64) for k in ("eps", "z")}
        out.append((a.double(), b.double(), noise))
    return cfg, ds, out


def state_of(state) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in state.nets.items():
        for k, v in m.state_dict().items():
            out[f"{name}.{k}"] = v.detach().clone()
    for name, opt in state.optimizers.items():
        for i, st in opt.state_dict()["state"].items():
            for k in ("exp_avg", "exp_avg_sq"):
                out[f"opt.{name}.{i}.{k}"] = st[k].detach().clone()
    return out


def reference(world: int, norm: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """One process at batch world * B: encoded half = every rank's (A1, B1) in rank order, random half = every
    rank's B2; eps and z rows in the same order."""
    from bicycle.plugins import get_plugins
    from bicycle.train.state import build_state
    from bicycle.train.step import train_step
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # this runs in the test process: put the default back afterwards
    try:
        cfg, _, batches = global_batches(world, norm)
        state = build_state(cfg, get_plugins().registry, "cpu")
        h = B // 2
        for a, b, noise in batches:
            order = ([r * B + i for r in range(world) for i in range(h)]
                     + [r * B + h + i for r in range(world) for i in range(h)])
            train_step(state, a[order], b[order], noise)
        return state_of(state), inert_biases(state.nets)
    finally:
        torch.set_default_dtype(old)


def rank_main(rank: int, world: int, init_file: str, out_dir: str, kl_factor: bool, norm: str) -> None:
    from bicycle.models import draw_noise
    from bicycle.plugins import get_plugins
    from bicycle.train.distributed import Group, World
    from bicycle.train.state import build_state
    from bicycle.train.step import train_step
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    w = World(rank, world, rank, launched=True)
    group = Group(w, torch.device("cpu"))
    cfg, _, batches = global_batches(world, norm)
    state = build_state(cfg, get_plugins().registry, "cpu", world=w)
    own = draw_noise(state.model, B, cfg.net.nz, "cpu")  # this rank's own stream, after initialisation
    torch.save(own, Path(out_dir) / f"noise{rank}.pt")
    if not kl_factor:
        state.loss_setup = dataclasses.replace(state.loss_setup, world_size=1)
    h = B // 2
    for a, b, noise in batches:
        rows = slice(rank * B, (rank + 1) * B)
        mine = {k: v[rank * h:(rank + 1) * h] for k, v in noise.items()}
        train_step(state, a[rows], b[rows], mine)
    torch.save(state_of(state), Path(out_dir) / f"rank{rank}.pt")
    group.barrier()
    group.close()
