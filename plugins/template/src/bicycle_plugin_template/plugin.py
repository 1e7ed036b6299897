"""The hooks this plugin implements (every hook: bicycle/hookspecs.py and docs/plugins.md).

Implement only the hooks you need; a ``bicycle_*`` function with a misspelled name is an error.
Keep module import cheap (no torch at import time when you can): bicycle imports every plugin
when it builds its registry, even for ``bicycle plugins``.
"""
from __future__ import annotations

from collections.abc import Sequence

from bicycle import hookimpl
from bicycle.registry import InjectionPoint, InjectorSpec


def _build(points: Sequence[InjectionPoint], nz: int):
    from bicycle_plugin_template.injector import AddInjector
    return AddInjector(points, nz)


@hookimpl
def bicycle_injectors() -> list[InjectorSpec]:
    return [InjectorSpec("template_add", _build, "template: z projected per point and added to the features")]


# @hookimpl
# def bicycle_backbones() -> list[BackboneSpec]:
#     return [BackboneSpec("mynet", build, check_size, None, "what it is")]
#
# @hookimpl
# def bicycle_datasets() -> list[DatasetSpec]:
#     return [DatasetSpec("mydata", build, "what it is", needs_path=False, has_oracle=False)]
#
# @hookimpl
# def bicycle_train_step(step: int, metrics: dict[str, float], run_dir: Path) -> None:
#     ...  # any subset of the hook's arguments, by name
#
# @hookimpl
# def bicycle_train_sample(step: int, image: np.ndarray, measures: dict[str, float]) -> None:
#     ...  # image: the progress grid, uint8 [H, W, 3]; measures: z_sensitivity (+ the oracle's numbers)
