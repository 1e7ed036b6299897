"""``RUN/train.log``: a plain-text copy of what the console showed during training (appended on resume)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

LOG_NAME = "train.log"


class RunLog:
    def __init__(self, run_dir: Path | None) -> None:
        """``run_dir`` None: a log that keeps nothing (ranks other than 0)."""
        self.path = run_dir / LOG_NAME if run_dir is not None else None
        self._file: TextIO | None = open(self.path, "a", buffering=1, encoding="utf-8") if self.path else None

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line.rstrip("\n") + "\n")

    def tee(self, echo: Callable[[str], None]) -> Callable[[str], None]:
        """``echo`` that also writes each line here."""
        def both(line: str) -> None:
            echo(line)
            self.write(line)
        return both

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
