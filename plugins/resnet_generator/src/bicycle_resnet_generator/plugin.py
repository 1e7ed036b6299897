"""Hook implementations: registers the backbones ``resnet6`` and ``resnet9``."""
from __future__ import annotations

from collections.abc import Callable

from bicycle import hookimpl
from bicycle.registry import BackboneSpec, GeneratorArgs, InjectorSpec

MIN_SIZE = 32  # bicycle's smallest supported image size


def check_size(size: int) -> str | None:
    if size < MIN_SIZE or size % 4:
        return f"backbone 'resnet6'/'resnet9' needs an image size of at least {MIN_SIZE} that is a multiple of 4, got {size}"
    return None


def _builder(n_blocks: int) -> Callable[[GeneratorArgs, InjectorSpec], object]:
    def build(args: GeneratorArgs, injector: InjectorSpec):
        from bicycle_resnet_generator.network import ResnetGenerator  # torch only when a network is built
        return ResnetGenerator(args, injector, n_blocks)
    return build


@hookimpl
def bicycle_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec("resnet6", _builder(6), check_size, None, "ResNet generator, 6 residual blocks (pix2pix resnet_6blocks)"),
        BackboneSpec("resnet9", _builder(9), check_size, None, "ResNet generator, 9 residual blocks (pix2pix resnet_9blocks)"),
    ]
