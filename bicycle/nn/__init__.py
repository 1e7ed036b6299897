"""Networks: U-Net generator, encoders, multi-scale PatchGAN discriminators. Explicit arguments only."""
