"""The backbone/injector contract (see :mod:`bicycle.registry`), checked from both sides.

Backbone side: a spy injector records what the backbone declares and calls. Injector side: the
injector is driven directly at a set of points, without a backbone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from bicycle.registry import InjectionPoint, Injector, InjectorSpec
from bicycle.testing.cases import GeneratorCase
from bicycle.testing.generator import state_tensors
from bicycle.testing.report import ConformanceError

# Points of a small 5-level U-Net at 32 px (1-channel input): what an injector is driven at by default.
DEFAULT_POINTS = (InjectionPoint(0, 1, 32, 32), InjectionPoint(1, 8, 16, 16), InjectionPoint(2, 16, 8, 8),
                  InjectionPoint(3, 32, 4, 4), InjectionPoint(4, 64, 2, 2))
# Its decoder points (levels 4..1, before the skips join), added for an injector that asks for them.
DEFAULT_DECODER_POINTS = (InjectionPoint(5, 64, 2, 2, True), InjectionPoint(6, 32, 4, 4, True),
                          InjectionPoint(7, 16, 8, 8, True), InjectionPoint(8, 8, 16, 16, True))


def default_points(spec: InjectorSpec) -> tuple[InjectionPoint, ...]:
    """What ``spec`` is driven at alone: the encoder points, and the decoder points when it asks for them."""
    return DEFAULT_POINTS + (DEFAULT_DECODER_POINTS if spec.decoder else ())


class _SpyInjector(Injector):
    """Wraps a real injector and records every call as (index, shape of x, shape of z)."""

    def __init__(self, inner: Injector) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []

    def channels_after(self, index: int) -> int:
        return self.inner.channels_after(index)

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        self.calls.append((index, tuple(x.shape), tuple(z.shape)))
        return self.inner(index, x, z)


class _SpySpec:
    """Builds spies and remembers each build's points (a per-check object, not global state)."""

    def __init__(self, spec: InjectorSpec) -> None:
        self.spec = spec
        self.builds: list[tuple[list[InjectionPoint], int, _SpyInjector]] = []

    def as_spec(self) -> InjectorSpec:
        return dataclasses.replace(self.spec, build=self._build)

    def _build(self, points: Sequence[InjectionPoint], nz: int) -> _SpyInjector:
        spy = _SpyInjector(self.spec.build(points, nz))
        self.builds.append((list(points), nz, spy))
        return spy


def check_injection_contract(case: GeneratorCase) -> str:
    """The backbone builds the injector once, declares point 0 as its input A, declares decoder points (after
    the encoder ones) exactly when the injector asks for them, registers the injector as a submodule, and in
    forward calls it exactly once per declared point with x of the declared shape."""
    spy = _SpySpec(case.injector)
    g = case.build(injector=spy.as_spec()).eval()
    who = case.subject
    if len(spy.builds) != 1:
        raise ConformanceError(f"{who}: the backbone built the injector {len(spy.builds)} times, expected once")
    points, nz, injector = spy.builds[0]
    if nz != case.args.nz:
        raise ConformanceError(f"{who}: injector built with nz={nz}, expected {case.args.nz}")
    if [p.index for p in points] != list(range(len(points))) or not points:
        raise ConformanceError(f"{who}: injection points must be indexed 0..k-1 in order, got {[p.index for p in points]}")
    decoder = [p.decoder for p in points]
    if case.injector.decoder and not any(decoder):
        raise ConformanceError(f"{who}: injector {case.injector.name!r} asks for decoder points and none were declared")
    if not case.injector.decoder and any(decoder):
        raise ConformanceError(f"{who}: decoder points were declared to an injector that did not ask for them")
    if decoder != sorted(decoder) or decoder[0]:
        raise ConformanceError(f"{who}: decoder points must follow the encoder points, got {points}")
    s = case.args.image_size
    if (points[0].channels, points[0].height, points[0].width) != (case.args.in_channels, s, s):
        raise ConformanceError(f"{who}: point 0 must be the network input [{case.args.in_channels}, {s}, {s}], got {points[0]}")
    if not any(m is injector for m in g.modules()):
        raise ConformanceError(f"{who}: the injector is not a submodule of the generator (its parameters would not be trained or saved)")
    a, z = case.inputs()
    with torch.no_grad():
        g(a, z)
    seen = sorted(c[0] for c in injector.calls)
    if seen != [p.index for p in points]:
        raise ConformanceError(f"{who}: forward called the injector at points {seen}, expected each of "
                               f"{[p.index for p in points]} once")
    for index, x_shape, z_shape in injector.calls:
        p = points[index]
        if x_shape != (case.batch, p.channels, p.height, p.width):
            raise ConformanceError(f"{who}: point {index} was declared {p} but called with x of shape {x_shape}")
        if z_shape != (case.batch, case.args.nz):
            raise ConformanceError(f"{who}: point {index} called with z of shape {z_shape}, expected {(case.batch, case.args.nz)}")
    return f"{len(points)} points"


def _build_injector(spec: InjectorSpec, points: Sequence[InjectionPoint], nz: int, seed: int) -> Injector:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inj = spec.build(points, nz)
    if not isinstance(inj, Injector):
        raise ConformanceError(f"injector {spec.name!r}: build returned {type(inj).__name__}, expected a bicycle.registry.Injector")
    return inj


def _drive(inj: Injector, points: Sequence[InjectionPoint], z: Tensor, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [inj(p.index, torch.randn(z.shape[0], p.channels, p.height, p.width, generator=g), z) for p in points]


def check_injector_standalone(spec: InjectorSpec, points: Sequence[InjectionPoint] | None = None, nz: int = 8,
                              batch: int = 2) -> str:
    """Driven directly at ``points`` (default :func:`default_points`): output [N, channels_after(i), H_i, W_i] at every point, z matters at
    some point, every parameter gets a gradient, safetensors round trip and seeded builds are exact."""
    who = f"injector {spec.name!r}"
    points = default_points(spec) if points is None else points
    inj = _build_injector(spec, points, nz, 0).train()
    z = torch.randn(batch, nz, generator=torch.Generator().manual_seed(1), requires_grad=True)
    outs = _drive(inj, points, z)
    for p, out in zip(points, outs):
        after = inj.channels_after(p.index)
        if not isinstance(after, int) or after < 1:
            raise ConformanceError(f"{who}: channels_after({p.index}) returned {after!r}, expected a positive int")
        if tuple(out.shape) != (batch, after, p.height, p.width):
            raise ConformanceError(f"{who}: at {p} the output has shape {tuple(out.shape)}, expected "
                                   f"{(batch, after, p.height, p.width)} (channels_after({p.index}) = {after})")
    if not any(o.requires_grad for o in outs):
        raise ConformanceError(f"{who}: the output does not depend on z at any point (and has no parameters)")
    sum(o.square().mean() for o in outs).backward()
    params = [(n, q) for n, q in inj.named_parameters() if q.requires_grad]
    starved = [n for n, q in params if q.grad is None or not q.grad.abs().max() > 0]
    if starved:
        raise ConformanceError(f"{who}: no gradient reaches {', '.join(starved[:8])}")
    if z.grad is None or not z.grad.abs().max() > 0:
        raise ConformanceError(f"{who}: the output does not depend on z at any point")
    inj.eval()
    z2 = z.detach()
    ref = [o.detach() for o in _drive(inj, points, z2)]
    twin = _build_injector(spec, points, nz, 0).eval()
    other = _build_injector(spec, points, nz, 1).eval()
    s1, s2 = state_tensors(inj), state_tensors(twin)
    if s1.keys() != s2.keys() or any(not torch.equal(s1[k], s2[k]) for k in s1):
        raise ConformanceError(f"{who}: two builds under the same seed differ")
    from safetensors.torch import load, save
    other.load_state_dict(load(save(s1)) if s1 else {}, strict=True)
    with torch.no_grad():
        again = _drive(other, points, z2)
    if any(not torch.equal(r, o) for r, o in zip(ref, again)):
        raise ConformanceError(f"{who}: after a safetensors round trip the outputs differ")
    return f"{len(points)} points, {len(params)} parameter tensors"

