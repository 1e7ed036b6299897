"""``bicycle env``: versions, device, fused-op implementations, plugins."""
from __future__ import annotations

import importlib.metadata as md
import platform

import click

from bicycle.commands.reporting import reports_errors


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


@click.command("env")
@reports_errors
def env() -> None:
    """Versions, device, which implementation each fused op uses and why, plugins loaded."""
    for line in report():
        click.echo(line)


def report() -> list[str]:
    import torch

    lines = [f"bicycle {_version('bicycle')}, python {platform.python_version()}, {platform.machine()}"]
    lines.append("versions: " + ", ".join(f"{d} {_version(d)}" for d in
                                            ("torch", "triton", "numpy", "pillow", "safetensors", "pluggy", "click")))
    if torch.cuda.is_available():
        lines.append(f"device: cuda ({torch.cuda.get_device_name(0)}), {torch.cuda.device_count()} GPU(s)")
    else:
        lines.append(f"device: cpu ({torch.get_num_threads()} threads); CUDA not available")
    lines.append("ops (which implementation impl=auto picks, and why):")
    lines += ["  " + line for line in format_op_impls(op_impls()).splitlines()]
    from bicycle.plugins import build_plugins
    p = build_plugins(strict=False)  # a broken plugin is listed, not fatal: this is where one looks for it
    lines.append("plugins: " + ", ".join(p.plugin_names()))
    for name, why in sorted(p.broken.items()):
        lines.append(f"broken plugin {name!r}: {why}")
    return lines


DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")


def op_impls() -> list[dict]:
    """One record per (op, device type): the impl ``auto`` picks, the reason, and every impl's availability.

    Each record: ``{"op", "device", "auto", "reason", "available": {impl: True | "why not"}, "device_present"}``.
    """
    import torch

    from bicycle import ops

    present = {"cpu": True, "cuda": torch.cuda.is_available()}
    records = []
    for op in ops.OPS:
        for device in DEVICE_TYPES:
            impl, reason = ops.auto_choice(device, op)
            available = {}
            for name in ("triton", "cpp", "ref"):
                why = ops.unavailable_reason(name, device, op)
                available[name] = True if why is None else why
            records.append({
                "op": op, "device": device, "auto": impl, "reason": reason, "available": available,
                "device_present": present[device],
            })
    return records


def format_op_impls(records: list[dict]) -> str:
    """A plain-text table of :func:`op_impls` records."""
    lines = [f"{'op':<14} {'device':<6} {'auto':<7} reason"]
    for r in records:
        note = "" if r["device_present"] else " (no such device here)"
        lines.append(f"{r['op']:<14} {r['device']:<6} {r['auto']:<7} {r['reason']}{note}")
    return "\n".join(lines)
