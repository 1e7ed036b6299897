"""The plugin manager, built lazily on first use (never at ``import bicycle``).

Plugins come from three places, all through the same hooks (:mod:`bicycle.hookspecs`):
the built-ins (:mod:`bicycle.builtin`), third-party packages in the entry-point group ``bicycle``
(skipped when ``BICYCLE_DISABLE_PLUGIN_AUTOLOAD=1``; single plugins are skipped with
``BICYCLE_DISABLE_PLUGINS=name,name``), and objects passed to :func:`load_plugins` (tests, scripts).
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from bicycle import hookspecs
from bicycle.errors import PluginError
from bicycle.registry import Registry

ENTRY_POINT_GROUP = "bicycle"
AUTOLOAD_ENV = "BICYCLE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "BICYCLE_DISABLE_PLUGINS"
BUILTIN_MODULES = ("bicycle.builtin.backbones", "bicycle.builtin.injectors", "bicycle.builtin.datasets")
_COMPONENT_HOOKS = {"backbone": "bicycle_backbones", "injector": "bicycle_injectors", "dataset": "bicycle_datasets"}


class _Manager(pluggy.PluginManager):
    """Treats any ``bicycle_*`` function as a hook implementation, marked or not, so that a
    misspelled hook name is caught by ``check_pending`` instead of being silently ignored."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("bicycle_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


# What plugin code may raise that bicycle catches and names: errors, and sys.exit() (never Ctrl-C).
PLUGIN_FAILURES = (Exception, SystemExit)


@dataclass
class Plugins:
    """``broken``: plugins that failed to load (name -> reason), kept only by ``build_plugins(strict=False)``;
    ``disabled``: observers switched off after they raised during a run."""

    manager: pluggy.PluginManager
    registry: Registry
    broken: dict[str, str] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)

    def notify(self, hook: str, warn: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        """Call an observer hook on every plugin. An observer that raises is disabled for the rest of the
        process with one warning naming it; the caller (a training run) goes on."""
        caller = getattr(self.manager.hook, hook)
        for impl in caller.get_hookimpls():
            if impl.plugin_name in self.disabled:
                continue
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except PLUGIN_FAILURES as exc:
                self.disabled.add(impl.plugin_name)
                why = _failure(impl.plugin_name, f"raised in {hook}: {_describe(exc)}")
                (warn or _stderr)(f"warning: {why}; it is disabled for the rest of this run")

    def listening(self, hook: str, arg: str) -> bool:
        """Whether an enabled implementation of ``hook`` declares ``arg``: the caller computes an
        argument that costs something only then (and must then pass it to :meth:`notify`)."""
        impls = getattr(self.manager.hook, hook).get_hookimpls()
        return any(arg in impl.argnames for impl in impls if impl.plugin_name not in self.disabled)

    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self.manager.list_name_plugin())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


def _failure(plugin: str, what: str) -> str:
    return (f"plugin {plugin!r} {what}. Disable it with {BLOCK_ENV}={plugin} "
            f"(or all third-party plugins with {AUTOLOAD_ENV}=1)")


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def build_plugins(extra: Iterable[object] = (), autoload: bool | None = None, strict: bool = True) -> Plugins:
    """Create a plugin manager with the built-ins, entry points (unless disabled) and ``extra``.
    A third-party plugin that fails to import, register or list its components is a PluginError naming
    it; with ``strict=False`` (``bicycle env``) it is left out and listed in ``Plugins.broken`` instead."""
    broken: dict[str, str] = {}

    def fail(name: str, message: str, exc: BaseException) -> None:
        if strict:
            raise PluginError(message) from exc
        broken[name] = message

    pm = _Manager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_MODULES:
        pm.register(importlib.import_module(modname), name=modname)
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    if autoload:
        blocked = _blocked()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except PLUGIN_FAILURES as exc:
                fail(ep.name, _failure(ep.name, f"({ep.value}) failed to import: {_describe(exc)}"), exc)
                continue
            try:
                pm.register(plugin, name=ep.name)
            except ValueError as exc:
                fail(ep.name, _failure(ep.name, f"could not be registered: {exc}"), exc)
    for i, obj in enumerate(extra):
        pm.register(obj, name=getattr(obj, "__name__", None) or f"{type(obj).__name__}-{i}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = getattr(exc, "plugin", None)
        raise PluginError(f"{exc} (known hooks: {', '.join(sorted(h for h in dir(hookspecs) if h.startswith('bicycle_')))})"
                          + (f" in plugin {pm.get_name(name)!r}" if name is not None else "")) from exc
    registry = Registry()
    for kind, hook in _COMPONENT_HOOKS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            try:
                specs = impl.function()
                if not isinstance(specs, (list, tuple)):
                    raise PluginError(_failure(impl.plugin_name, f"returned {type(specs).__name__} from {hook}; "
                                                                 f"expected a list of {kind} specs"))
                for spec in specs:
                    registry.add(kind, spec, impl.plugin_name)
            except PluginError as exc:
                fail(impl.plugin_name, str(exc), exc)
            except PLUGIN_FAILURES as exc:
                fail(impl.plugin_name, _failure(impl.plugin_name, f"raised in {hook}: {_describe(exc)}"), exc)
    return Plugins(pm, registry, broken)


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, built on first call."""
    global _current
    if _current is None:
        _current = build_plugins()
    return _current


def set_plugins(plugins: Plugins | None) -> None:
    """Replace (or with None, reset) the process-wide plugin set. For tests and embedding."""
    global _current
    _current = plugins
