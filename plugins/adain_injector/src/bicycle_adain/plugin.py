"""Hook implementations: registers the injector ``adain`` (every point but the network input)."""
from __future__ import annotations

from collections.abc import Sequence

from bicycle import hookimpl
from bicycle.registry import InjectionPoint, InjectorSpec


def build_adain(points: Sequence[InjectionPoint], nz: int):
    from bicycle_adain.injector import AdaINInjector  # torch only when a network is built
    return AdaINInjector(points, nz, frozenset(p.index for p in points if p.index > 0))


@hookimpl
def bicycle_injectors() -> list[InjectorSpec]:
    return [InjectorSpec("adain", build_adain, "AdaIN-style modulation: per-channel scale/shift from z at every point but the input")]
