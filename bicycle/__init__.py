"""bicycle: multimodal image-to-image translation (BicycleGAN).

Importing bicycle is cheap: no device probing, no plugin loading, no compilation.
"""
__version__ = "0.1.0"

from bicycle.hookspecs import hookimpl  # noqa: E402  (cheap: pluggy only)

__all__ = ["__version__", "hookimpl"]
