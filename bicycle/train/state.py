"""A run's training state: networks on their device, one Adam per network, the model and its loss
setup, assembled in one place (:func:`build_state`) for the loop, the benchmarks and the tests."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from bicycle.build import build_networks
from bicycle.config import RunConfig
from bicycle.losses import LossSetup
from bicycle.models import MODELS, ModelSpec
from bicycle.nets import Nets
from bicycle.registry import Registry
from bicycle.train.execution import prepare_networks
from bicycle.train.distributed import SINGLE, World, rank_seed, wrap
from bicycle.train.ema import WeightAverage
from bicycle.train.guard import DivergenceGuard

DISCRIMINATORS = frozenset({"D", "D2"})


@dataclass
class TrainState:
    """``base_lrs``: each optimizer's learning rate before the schedule (see :func:`base_lrs`); ``guard``:
    notices the first non-finite step (None: unguarded, e.g. the benchmarks' reference). ``step_nets``: what
    the step calls, the networks' DDP wrappers under data parallelism (None: ``nets`` themselves); ``nets``
    are always the bare networks (checkpoints). ``ema``: the moving averages of G and E (``train.ema``), which
    the run samples with (:attr:`sampling_nets`)."""

    nets: Nets
    optimizers: dict[str, torch.optim.Optimizer]
    model: ModelSpec
    loss_setup: LossSetup
    base_lrs: dict[str, float]
    guard: DivergenceGuard | None = None
    step_nets: Nets | None = None
    ema: WeightAverage | None = None

    @property
    def sampling_nets(self) -> Nets:
        """What the run's grids, final report and posterior use: the averages of G and E when kept, else ``nets``."""
        return self.ema.nets if self.ema is not None else self.nets


def base_lrs(cfg: RunConfig, names: Iterable[str]) -> dict[str, float]:
    """The LR of each named network before the schedule: ``optim.lr_d`` for D and D2 when set, else ``optim.lr``."""
    o = cfg.optim
    return {n: o.lr_d if (n in DISCRIMINATORS and o.lr_d is not None) else o.lr for n in names}


def build_optimizers(cfg: RunConfig, nets: Nets, *, plain: bool = False) -> dict[str, torch.optim.Adam]:
    """Adam per network, on the networks' device; capturable on CUDA (the step count stays on the
    device, so the update needs no host read and can be captured in a CUDA graph); the fused
    implementation on a CPU (the same update, about 9% less time per 32-px demo step here).
    ``plain``: torch's default Adam everywhere, as the original implementation (the benchmarks' reference)."""
    o = cfg.optim
    lrs = base_lrs(cfg, [name for name, _ in nets.items()])
    out = {}
    for name, m in nets.items():
        cuda = next(m.parameters()).is_cuda
        fast = {} if plain else ({"capturable": True} if cuda else {"fused": True})
        out[name] = torch.optim.Adam(m.parameters(), lr=lrs[name], betas=(o.beta1, o.beta2), **fast)
    return out


def build_state(cfg: RunConfig, registry: Registry, device: torch.device | str, *, plain_adam: bool = False,
                world: World = SINGLE, ddp_stream: torch.cuda.Stream | None = None) -> TrainState:
    """Networks initialised from ``cfg.train.seed`` (resolved ``cfg``: channels filled in), on ``device``
    in train mode, prepared for ``cfg.train.precision`` / ``compile``; optimizers per
    :func:`build_optimizers`; the loss setup with lambda_KL's warm-up tensor when ``loss.kl_warmup`` > 0.
    A ``world`` launched by torchrun (its process group up) adds the DDP wrappers (built on ``ddp_stream``
    when given: CUDA-graph capture wants them off the default stream), the KL's world-size factor and
    this rank's own noise stream."""
    torch.manual_seed(cfg.train.seed)
    nets = build_networks(cfg, registry)
    for _, m in nets.items():
        m.to(device).train()
    ema = WeightAverage(nets, cfg.train.ema) if cfg.train.ema > 0 else None
    prepare_networks(nets, cfg.train.precision, cfg.train.compile)
    optimizers = build_optimizers(cfg, nets, plain=plain_adam)
    # lambda_KL's warm-up multiplier: a device tensor refilled before each step (None: constant, as the paper)
    kl_scale = torch.ones((), device=device) if cfg.loss.kl_warmup > 0 else None
    model = MODELS[cfg.train.model]
    setup = LossSetup(cfg.loss, cfg.net.gan_mode, cfg.train.impl, kl_scale, world_size=world.size,
                      conditional_d=cfg.net.conditional_d)
    step_nets = None
    if world.launched:
        with torch.cuda.stream(ddp_stream) if ddp_stream is not None else contextlib.nullcontext():
            step_nets = wrap(nets, torch.device(device), unused_in_encoder=not model.variational,
                             static_graph=ddp_stream is not None)
        if world.rank > 0:  # rank 0 keeps the single-process stream
            torch.manual_seed(rank_seed(cfg.train.seed, world.rank))
    return TrainState(nets, optimizers, model, setup, base_lrs(cfg, optimizers), DivergenceGuard(device), step_nets,
                      ema)
