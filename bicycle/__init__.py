"""bicycle: multimodal image-to-image translation (BicycleGAN).

Importing bicycle is cheap: no device probing, no plugin loading, no compilation.
"""
__version__ = "0.1.0"
