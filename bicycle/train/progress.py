"""A small progress line (no dependency): in place on a terminal, one line per update otherwise."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, start: int = 0, stream=None, log: Callable[[str], None] | None = None) -> None:
        """``log``: also receives every update and message as a plain line (the run's train.log)."""
        self.total, self.start, self.log = total, start, log
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.ref_step, self.ref_time = start, self.t0

    def rate(self, step: int) -> float:
        """Seconds per step since the reference point (reset after warm-up)."""
        return (time.perf_counter() - self.ref_time) / max(1, step - self.ref_step)

    def reset_rate(self, step: int) -> None:
        self.ref_step, self.ref_time = step, time.perf_counter()

    def eta(self, step: int) -> float:
        return self.rate(step) * (self.total - step)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        width = 20
        done = int(width * step / max(1, self.total))
        bar = "#" * done + "-" * (width - done)
        losses = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        line = f"[{bar}] {step}/{self.total}  {losses}  {self.rate(step):.3f} s/step  ETA {fmt_duration(self.eta(step))}"
        if self.log is not None:
            self.log(line)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.log is not None:
            self.log(text)
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()
