"""The plugin's injector passes bicycle's conformance kit, alone and inside the built-in U-Net."""
import torch

from bicycle.registry import InjectionPoint
from bicycle.testing.fixtures import InjectorConformance


class TestAdaIN(InjectorConformance):
    injector = "adain"
    backbones = ("unet",)


def test_keeps_channels_and_leaves_the_input_alone(bicycle_registry):
    points = [InjectionPoint(0, 1, 8, 8), InjectionPoint(1, 4, 4, 4)]
    inj = bicycle_registry.injector("adain").build(points, 3)
    assert [inj.channels_after(p.index) for p in points] == [1, 4]
    x0, x1, z = torch.randn(2, 1, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 3)
    assert torch.equal(inj(0, x0, z), x0)
    assert inj(1, x1, z).shape == x1.shape
