"""ResNet-block generators for bicycle (a backbone that is not a U-Net)."""
from bicycle_resnet_generator.network import ResnetGenerator

__all__ = ["ResnetGenerator"]
