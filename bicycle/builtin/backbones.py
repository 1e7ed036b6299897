"""Built-in generator backbones: U-Nets with a fixed or size-derived depth."""
from __future__ import annotations

from bicycle.config import MIN_IMAGE_SIZE
from bicycle.hookspecs import hookimpl
from bicycle.nn.layers import two_adic
from bicycle.nn.unet import UNetGenerator
from bicycle.registry import BackboneSpec, GeneratorArgs, InjectorSpec

MIN_AUTO_DEPTH = 4


def auto_depth(image_size: int) -> int:
    """Levels of ``unet`` at this size: down to a 1x1 bottleneck for powers of two, at most 8."""
    return min(8, two_adic(image_size))


def _check_fixed(depth: int):
    def check(size: int) -> str | None:
        if size < MIN_IMAGE_SIZE or size % (2**depth):
            return f"unet with {depth} down-samplings needs an image size that is a multiple of {2**depth}, got {size}"
        return None
    return check


def _check_auto(size: int) -> str | None:
    if size < MIN_IMAGE_SIZE or size % (2**MIN_AUTO_DEPTH):
        return f"backbone 'unet' needs an image size of at least {MIN_IMAGE_SIZE} that is a multiple of 16, got {size}"
    return None


def _fixed(depth: int):
    def build(args: GeneratorArgs, injector: InjectorSpec) -> UNetGenerator:
        return UNetGenerator(args, injector, depth)
    return build


def _build_auto(args: GeneratorArgs, injector: InjectorSpec) -> UNetGenerator:
    return UNetGenerator(args, injector, auto_depth(args.image_size))


@hookimpl
def bicycle_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec("unet", _build_auto, _check_auto, None,
                     "U-Net whose depth follows the image size (log2 for powers of two, at most 8)", decoder_points=True),
        BackboneSpec("unet128", _fixed(7), _check_fixed(7), 128, "U-Net with 7 down-samplings (paper, 128 px)",
                     decoder_points=True),
        BackboneSpec("unet256", _fixed(8), _check_fixed(8), 256, "U-Net with 8 down-samplings (paper, 256 px)",
                     decoder_points=True),
    ]
