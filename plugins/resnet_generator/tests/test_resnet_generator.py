"""The plugin's backbones pass bicycle's conformance kit with the built-in injectors (via the entry point)."""
from bicycle.testing.fixtures import BackboneConformance


class TestResnet6(BackboneConformance):
    backbone = "resnet6"
    injectors = ("input", "all")


class TestResnet9At48(BackboneConformance):
    backbone = "resnet9"
    injectors = ("all",)
    image_size = 48
