"""Observer hooks writing ``<run_dir>/tensorboard/events.out.tfevents.*`` with torch's SummaryWriter.

Tags (see ``tensorboard --logdir <run_dir>/tensorboard``):

* ``train/<metric>``: what ``bicycle_train_step`` carries (the losses, ``lr``, ``lambda_kl``,
  ``sec_per_step``), and ``train/interrupted`` (0 or 1) at the end of a session;
* ``sample/<measure>``: the progress grid's measures (``z_sensitivity``; with a dataset oracle
  ``valid_rate`` and ``modes_per_input``);
* ``sample/grid``: the progress grid itself, as an image.

One writer per run dir, opened by ``bicycle_train_start`` (or by the first hook that needs it) and
closed by ``bicycle_train_end``. A resumed session (``start_step > 0``) opens its writer with
``purge_step = start_step + 1``: TensorBoard then drops what an earlier, crashed session logged after
the checkpoint training resumes from, and each curve continues as one.
"""
from __future__ import annotations

import atexit
from pathlib import Path
from typing import TYPE_CHECKING

from bicycle import hookimpl

if TYPE_CHECKING:
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

FOLDER = "tensorboard"
_writers: dict[Path, SummaryWriter] = {}


def writer_for(run_dir: Path, purge_step: int | None = None) -> SummaryWriter:
    """The run's open writer, or a new one on ``run_dir/tensorboard`` (``purge_step``: only then)."""
    key = Path(run_dir).resolve()
    writer = _writers.get(key)
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter  # imported once a run logs: plugin import stays cheap

        writer = _writers[key] = SummaryWriter(str(key / FOLDER), purge_step=purge_step)
    return writer


def close(run_dir: Path) -> None:
    """Flush and close the run's writer, if one is open."""
    writer = _writers.pop(Path(run_dir).resolve(), None)
    if writer is not None:
        writer.close()


@atexit.register
def close_all() -> None:
    """Close every open writer (also at exit: a session that never reached ``bicycle_train_end``)."""
    for run_dir in list(_writers):
        close(run_dir)


@hookimpl
def bicycle_train_start(run_dir: Path, start_step: int) -> None:
    close(run_dir)  # a writer left open by an earlier session of this process
    writer_for(run_dir, purge_step=start_step + 1 if start_step > 0 else None)


@hookimpl
def bicycle_train_step(step: int, metrics: dict[str, float], run_dir: Path) -> None:
    writer = writer_for(run_dir)
    for name, value in metrics.items():
        writer.add_scalar(f"train/{name}", float(value), step)


@hookimpl
def bicycle_train_sample(step: int, run_dir: Path, image: np.ndarray | None, measures: dict[str, float]) -> None:
    """``image``: uint8 [H, W, 3]."""
    writer = writer_for(run_dir)
    for name, value in measures.items():
        writer.add_scalar(f"sample/{name}", float(value), step)
    if image is not None:
        writer.add_image("sample/grid", image, step, dataformats="HWC")
    writer.flush()


@hookimpl
def bicycle_train_checkpoint(run_dir: Path) -> None:
    writer = _writers.get(Path(run_dir).resolve())
    if writer is not None:  # nothing logged yet: no file to flush
        writer.flush()


@hookimpl
def bicycle_train_end(step: int, run_dir: Path, interrupted: bool) -> None:
    writer_for(run_dir).add_scalar("train/interrupted", float(interrupted), step)
    close(run_dir)
