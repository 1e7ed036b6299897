"""The schedules of a run, functions of (step, total steps) so that a resumed run continues them exactly."""
from __future__ import annotations


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Constant, then linear decay to 0 over the last (1 - decay_start) of the steps. step counts from 0."""
    start = int(total * decay_start)
    if step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / max(1, total - start))


def kl_factor(step: int, total: int, warmup: float) -> float:
    """lambda_KL's multiplier at ``step`` (from 0): (step + 1) / W over the first W = warmup * total steps, then 1."""
    ramp = warmup * total
    return 1.0 if ramp <= 1 else min(1.0, (step + 1) / ramp)
