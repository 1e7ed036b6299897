"""Observer hooks: ``<run_dir>/tensorboard/events.out.tfevents.*``, scalars ``train/<metric>``.

Stateless: ``bicycle_train_start`` creates a new event file (also on resume; TensorBoard reads every
file in the folder); later hooks append to the newest file of the run. View with
``tensorboard --logdir <run_dir>/tensorboard``.
"""
from __future__ import annotations

import os
from pathlib import Path

from bicycle import hookimpl
from bicycle_tensorboard.events import PREFIX, EventFileWriter

FOLDER = "tensorboard"


def current_writer(run_dir: Path) -> EventFileWriter:
    """The writer of the run's newest event file (created by bicycle_train_start)."""
    folder = run_dir / FOLDER
    files = sorted(folder.glob(f"{PREFIX}*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    if not files:
        return EventFileWriter.create(folder, f".{os.getpid()}")
    return EventFileWriter(files[-1])


@hookimpl
def bicycle_train_start(run_dir: Path, start_step: int) -> None:
    EventFileWriter.create(run_dir / FOLDER, f".{os.getpid()}.{start_step}")


@hookimpl
def bicycle_train_step(step: int, metrics: dict[str, float], run_dir: Path) -> None:
    current_writer(run_dir).add_scalars(step, {f"train/{k}": float(v) for k, v in metrics.items()})


@hookimpl
def bicycle_train_end(step: int, run_dir: Path, interrupted: bool) -> None:
    current_writer(run_dir).add_scalars(step, {"train/interrupted": float(interrupted)})
