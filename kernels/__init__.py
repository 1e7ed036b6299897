"""Fused ops, one file per op: Triton kernels, launchers, autograd.Function and the plain-PyTorch
reference (the executable spec and the CPU fallback). Installed as ``bicycle.kernels``.

Only ``bicycle.ops`` imports this package; nothing here imports the rest of bicycle.
"""
