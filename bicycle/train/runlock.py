"""One writer per run dir: ``bicycle train`` and ``--resume`` hold an OS lock (``flock``) on ``RUN/run.lock``
for the run's life. The kernel drops it when the process ends, however it ends (``kill -9`` included), so a
lock is never stale; the file keeps the holder's pid for the message a second writer gets. Readers never
take it."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from bicycle.errors import ConfigError, RunDirBusy

LOCK_NAME = "run.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    out = []
    p = path.absolute()
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


def _has_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and (any(ckpts.glob("step_*.safetensors")) or (ckpts / "latest").exists())


def check_not_busy(run_dir: Path) -> None:
    """Refuse a run dir whose lock another process holds (checked again, for good, by :func:`run_dir_writer`)."""
    from bicycle.train.distributed import world_from_env

    if not world_from_env().main:  # under torchrun rank 0 alone holds the lock, and may hold it already
        return
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(run_dir, path) from None
    finally:
        os.close(fd)


def _busy(run_dir: Path, path: Path) -> RunDirBusy:
    return RunDirBusy(f"run dir {run_dir} is in use: {_holder(path)} is training into it (one writer per run dir); "
                      f"wait for it to end, or choose another --run-dir")


@contextlib.contextmanager
def run_dir_writer(run_dir: Path, *, resume: bool, hold: bool = True) -> Iterator[None]:
    """Create ``run_dir`` (when missing) and hold its lock for the block; a second writer gets
    :class:`RunDirBusy` naming the holder's pid. A fresh run (``resume`` False) finds no checkpoint under the
    lock, or is refused. When the block fails before any checkpoint was written, the folders this call
    created are removed again: a failed start leaves no empty run dir. ``hold`` False (a torchrun rank other
    than 0): nothing at all."""
    if not hold:
        yield
        return
    from bicycle.io import writing

    created = _missing_folders(run_dir)
    path = run_dir / LOCK_NAME
    with writing(path):
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_dir, path) from None
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if not resume and _has_checkpoint(run_dir):
            raise ConfigError(f"run dir {run_dir} already holds a run: continue it with --resume {run_dir}, "
                              f"or choose another --run-dir")
        try:
            yield
        except BaseException:
            if created and not _has_checkpoint(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
                for folder in created[1:]:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            raise
    finally:
        os.close(fd)
