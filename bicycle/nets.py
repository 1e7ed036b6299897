"""The networks of a run (:class:`Nets`) and the helpers that call them in the training maths."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Outputs = Tensor | list[Tensor]


@dataclass
class Nets:
    """The networks of a run. E and D2 are None for models that do not use them; D and D2 are None
    when the networks were built for inference only (:func:`bicycle.build.build_networks`)."""

    G: nn.Module
    D: nn.Module | None = None
    E: nn.Module | None = None
    D2: nn.Module | None = None

    def items(self) -> list[tuple[str, nn.Module]]:
        return [(k, m) for k, m in (("G", self.G), ("E", self.E), ("D", self.D), ("D2", self.D2)) if m is not None]


def bare(module: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


@contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[tuple[nn.Module | None, ...]]:
    """Parameters of ``modules`` get no gradient from what is computed inside (requires_grad off). Yields the
    bare networks (:func:`bare`) to call inside: a frozen use must not go through DDP's gradient hooks."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield tuple(None if m is None else bare(m) for m in modules)
    finally:
        for p in params:
            p.requires_grad_(True)


def couples_samples(module: nn.Module) -> bool:
    """True when ``module``'s forward mixes the samples of a batch (BatchNorm's batch statistics), so
    that one call on two concatenated batches would compute something else than two calls."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _halves(out: Outputs, n: int) -> tuple[Outputs, Outputs]:
    if isinstance(out, Tensor):
        return out[:n], out[n:]
    return [o[:n] for o in out], [o[n:] for o in out]


def call_twice(net: nn.Module, first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> tuple[Outputs, Outputs]:
    """(net(*first), net(*second)). When ``net`` treats samples independently, as one call on the
    concatenated batch: the same maths with half the kernel launches and larger convolutions (the demo
    preset's CPU step: 1.15-1.8x faster, benchmarks/results/step_merge_cpu_20261127.json). Inputs: [n, ...] each,
    the same n in both; outputs: a tensor or a list of tensors, [n, ...] each."""
    if couples_samples(net):
        return net(*first), net(*second)
    n = first[0].shape[0]
    return _halves(net(*(torch.cat([x, y]) for x, y in zip(first, second))), n)
