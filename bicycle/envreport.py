"""``bicycle env``: versions, device, fused-op implementations, plugins."""
from __future__ import annotations

import importlib.metadata as md
import platform


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def report() -> list[str]:
    import torch

    lines = [f"bicycle {_version('bicycle')}, python {platform.python_version()}, {platform.machine()}"]
    lines.append("versions: " + ", ".join(f"{d} {_version(d)}" for d in
                                            ("torch", "triton", "numpy", "pillow", "safetensors", "pluggy", "click")))
    if torch.cuda.is_available():
        lines.append(f"device: cuda ({torch.cuda.get_device_name(0)}), {torch.cuda.device_count()} GPU(s)")
    else:
        lines.append(f"device: cpu ({torch.get_num_threads()} threads); CUDA not available")
    from bicycle.envinfo import format_op_impls, op_impls
    lines.append("ops (which implementation impl=auto picks, and why):")
    lines += ["  " + line for line in format_op_impls(op_impls()).splitlines()]
    from bicycle.plugins import build_plugins
    p = build_plugins(strict=False)  # a broken plugin is listed, not fatal: this is where one looks for it
    lines.append("plugins: " + ", ".join(p.plugin_names()))
    for name, why in sorted(p.broken.items()):
        lines.append(f"broken plugin {name!r}: {why}")
    return lines
