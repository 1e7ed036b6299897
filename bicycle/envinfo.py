"""What the fused-op dispatcher will use here, and why (``bicycle env``)."""
from __future__ import annotations

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
