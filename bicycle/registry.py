"""Typed component specs registered by plugins, and the backbone/injector contract.

Contract between a backbone and an injector
-------------------------------------------
A backbone (generator) declares its *injection points* before building its layers: point i is the
input of its i-th encoding (down-sampling) block, point 0 being the network input A. Each point is
an :class:`InjectionPoint` (index, channels, height, width). The backbone calls
``injector_spec.build(points, nz)`` once and gets an :class:`Injector` module; it then

* builds the layer that consumes point i with ``injector.channels_after(i)`` input channels, and
* in ``forward(a, z)``, feeds ``injector(i, x_i, z)`` to that layer, where x_i is the tensor at
  point i, [N, channels_i, height_i, width_i], and z is [N, nz].

Skip connections carry x_i (without z). An injector may concatenate (changing the channel count),
modulate (keeping it), or pass some points through unchanged; it must not change N, H or W.

Decoder points (opt-in on both sides). An injector whose spec says ``decoder=True`` also wants z in the
decoder; only a backbone whose spec says ``decoder_points=True`` offers that, and it declares its decoder
points (``decoder=True``) only to such an injector. A decoder point is a decoding (up-sampling) block's output
before its skip connection joins it; decoder points are indexed after the encoding ones (k..k+m-1, in the
order forward visits them) and follow rules 1-2 above: the layer consuming the point is built for
``channels_after(j)`` channels (plus the skip's) and gets ``injector(j, y_j, z)``.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from bicycle.errors import ConfigError, PluginError


@dataclass(frozen=True)
class InjectionPoint:
    """The input of a backbone's i-th down-sampling block, [N, channels, height, width]; with ``decoder``, a
    decoding block's output before its skip connection joins it."""

    index: int
    channels: int
    height: int
    width: int
    decoder: bool = False


class Injector(nn.Module):
    """Injects z at a backbone's injection points. Subclasses implement both methods."""

    def channels_after(self, index: int) -> int:
        """Channels of point ``index`` after injection (what the consuming layer must accept)."""
        raise NotImplementedError

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        """x: [N, C_i, H_i, W_i], z: [N, nz] -> [N, channels_after(i), H_i, W_i]."""
        raise NotImplementedError


@dataclass(frozen=True)
class GeneratorArgs:
    """Everything a backbone factory gets. Images are square: image_size x image_size."""

    in_channels: int
    out_channels: int
    nz: int
    image_size: int
    ngf: int = 64
    norm: str = "instance"
    upsample: str = "basic"
    dropout: bool = False
    refine: int = 0


@dataclass(frozen=True)
class InjectorSpec:
    """A z-injection strategy. ``build(points, nz)`` -> Injector. ``decoder``: it needs decoder points too
    (only a backbone with ``decoder_points`` can take it)."""

    name: str
    build: Callable[[Sequence[InjectionPoint], int], Injector]
    description: str = ""
    decoder: bool = False


@dataclass(frozen=True)
class BackboneSpec:
    """A generator backbone.

    ``build(args, injector)`` -> nn.Module whose ``forward(a, z)`` maps A [N, in, S, S] and
    z [N, nz] to B [N, out, S, S] in [-1, 1]. ``check_size(S)`` returns None when S is supported,
    else a one-line reason. ``default_image_size`` (or None) is the size the backbone implies.
    ``decoder_points``: it declares decoder points to an injector whose spec asks for them.
    """

    name: str
    build: Callable[[GeneratorArgs, InjectorSpec], nn.Module]
    check_size: Callable[[int], str | None]
    default_image_size: int | None = None
    description: str = ""
    decoder_points: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset. ``build(request: bicycle.data.base.DatasetRequest)`` -> PairedDataset.

    ``needs_path``: a folder dataset (given as ``--data PATH``); ``has_oracle``: provides
    ``mode_of``/``is_valid``.
    """

    name: str
    build: Callable[..., object]
    description: str = ""
    needs_path: bool = False
    has_oracle: bool = False


KINDS = {"backbone": BackboneSpec, "injector": InjectorSpec, "dataset": DatasetSpec}


class Registry:
    """Components by kind and name, each remembering the plugin that registered it."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, tuple[object, str]]] = {k: {} for k in KINDS}

    def add(self, kind: str, spec: object, plugin: str) -> None:
        expected = KINDS[kind]
        if not isinstance(spec, expected):
            raise PluginError(f"plugin {plugin!r} returned {type(spec).__name__} from its {kind} hook; expected {expected.__name__}")
        name = spec.name  # type: ignore[attr-defined]
        if name in self._items[kind]:
            other = self._items[kind][name][1]
            raise PluginError(f"{kind} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}")
        self._items[kind][name] = (spec, plugin)

    def get(self, kind: str, name: str) -> object:
        items = self._items[kind]
        if name not in items:
            known = sorted(items)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown {kind} {name!r}{hint}; available: {', '.join(known) or 'none'}")
        return items[name][0]

    def plugin_of(self, kind: str, name: str) -> str:
        """The plugin that registered ``name`` (``get`` first: an unknown name is a ConfigError there)."""
        self.get(kind, name)
        return self._items[kind][name][1]

    def backbone(self, name: str) -> BackboneSpec:
        return self.get("backbone", name)  # type: ignore[return-value]

    def injector(self, name: str) -> InjectorSpec:
        return self.get("injector", name)  # type: ignore[return-value]

    def dataset(self, name: str) -> DatasetSpec:
        return self.get("dataset", name)  # type: ignore[return-value]

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def listing(self) -> list[tuple[str, str, str, str]]:
        """(kind, name, plugin, description) for every component, sorted."""
        rows = []
        for kind, items in self._items.items():
            for name, (spec, plugin) in sorted(items.items()):
                rows.append((kind, name, plugin, getattr(spec, "description", "")))
        return rows
