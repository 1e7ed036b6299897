"""Where a command may write: the one rule for ``export --out/--onnx``, ``convert-original --out``,
``sample --out``, ``eval --json`` and ``bench --json``.

- Never inside a run dir's ``checkpoints/``, never over a run's own files (``config.json``, ``latest``, a
  checkpoint, its lock, log, summary or posterior), never over a training checkpoint anywhere, even with
  ``--force``; ``sample --out`` is never a run dir itself.
- An existing output (a file; for ``sample --out``, a folder holding a previous ``grid.png``) only with
  ``--force``.
- The folder can be written and has room (``need`` bytes), checked before any slow work.
- Outputs appear whole or not at all: files are written atomically (:func:`bicycle.io.atomic_write_bytes`),
  folders of outputs through :func:`staged_folder`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bicycle.errors import ConfigError, StorageError

CHECKPOINTS = "checkpoints"
RUN_FILES = ("config.json", "run.lock", "train.log", "summary.json", "posterior.safetensors", "bad_images.txt")
JSON_ROOM = 1 << 20  # a JSON report, with slack
MIB = 2**20


def is_run_dir(folder: Path) -> bool:
    return (folder / CHECKPOINTS).is_dir()


def _training_checkpoint(path: Path) -> bool:
    """``path`` is a training checkpoint (format ``bicycle-checkpoint/*``), read from its header alone."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100 << 20:
                return False
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return str(meta.get("format", "")).startswith("bicycle-checkpoint/")


def _protected(path: Path, flag: str) -> None:
    """A run's own files and folders, and training checkpoints: refused, ``--force`` or not."""
    p = Path(os.path.abspath(path))
    for parent in p.parents:
        if parent.name == CHECKPOINTS and is_run_dir(parent.parent):
            raise ConfigError(f"{flag} {path} is inside run dir {parent.parent}'s {CHECKPOINTS}/: a run's checkpoints "
                              f"are never overwritten; choose a path outside it")
    if p.name == CHECKPOINTS and is_run_dir(p.parent):
        raise ConfigError(f"{flag} {path} is run dir {p.parent}'s {CHECKPOINTS}/ folder; choose a path outside it")
    if p.name in RUN_FILES and is_run_dir(p.parent):
        raise ConfigError(f"{flag} {path} would overwrite run dir {p.parent}'s own {p.name}; choose another path")
    if p.is_file() and _training_checkpoint(p):
        raise ConfigError(f"{flag} {path} is a training checkpoint: it is never overwritten; choose another path")


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    return p


def check_room(path: Path, need: int, flag: str) -> None:
    """``need`` bytes free where ``path`` (existing or not) will be written; StorageError otherwise."""
    where = _existing_ancestor(path)
    free = shutil.disk_usage(where).free
    if free < need:
        raise StorageError(f"{flag} {path}: {free / MIB:.1f} MiB free in {where}, the output needs about "
                           f"{need / MIB:.1f} MiB")


def check_writable(path: Path, flag: str, shown: Path | None = None) -> Path:
    """``path`` (a folder, created later if missing) can be written: probed with a real file in it or in its
    nearest existing parent, so read-only mounts and missing permissions fail here, not half way through.
    Returns the folder probed. ``shown``: the path the user gave (a file in ``path``), for the message."""
    where = _existing_ancestor(path)
    shown = shown or path
    if not where.is_dir():
        raise StorageError(f"{flag} {shown}: {where} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bicycle-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageError(f"{flag} {shown}: cannot write in {where}: {exc.strerror or exc}") from exc
    return where


def check_output_file(path: Path, flag: str, force: bool = False, need: int = JSON_ROOM) -> None:
    """An output file: not a run's own file, not an existing file without ``force``, in a writable folder
    with ``need`` bytes free."""
    _protected(path, flag)
    if path.is_dir():
        raise StorageError(f"{flag} {path} is a folder; give a file path")
    if path.exists() and not force:
        raise ConfigError(f"{flag} {path} already exists: give --force to replace it, or another path")
    check_writable(path.parent, flag, shown=path)
    check_room(path, need, flag)


def check_output_folder(path: Path, flag: str, force: bool = False, marker: str = "grid.png") -> None:
    """A folder of outputs: not a run dir or inside one's checkpoints, not holding earlier outputs (``marker``)
    without ``force``, writable."""
    _protected(path, flag)
    if is_run_dir(Path(os.path.abspath(path))):
        raise ConfigError(f"{flag} {path} is a run dir: outputs are not mixed with a run's files; choose another folder")
    if path.exists() and not path.is_dir():
        raise StorageError(f"{flag} {path} is a file, not a folder")
    if (path / marker).exists() and not force:
        raise ConfigError(f"{flag} {path} already holds outputs ({marker}): give --force to replace them, or "
                          f"another folder")
    check_writable(path, flag)


def check_new_run_dir(path: Path, flag: str) -> None:
    """A run dir a command creates (``convert-original --out``): not inside another run's checkpoints/."""
    _protected(path, flag)


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[None]:
    """A block that makes the folder ``path`` (and what it needs above it): when the block fails, every folder it
    created is removed again, with what the block wrote in it."""
    created, p = [], Path(os.path.abspath(path))
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
            for folder in created[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Write a folder's outputs into a hidden staging folder inside ``out``; when the block ends well they are
    moved into place (renames: no extra room), when it fails they are removed, and so is ``out`` if this
    call created it. What ``out`` held before is replaced file by file only on success."""
    from bicycle.io import writing

    with new_folder(out):
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".bicycle-partial-", dir=out))
        try:
            try:
                yield stage
            except OSError as exc:  # disk full, permission: the outputs so far are removed with the staging folder
                raise StorageError(f"cannot write {out}: {exc.strerror or type(exc).__name__}; nothing was "
                                   f"written there") from exc
            with writing(out):
                _merge(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if target.exists() and not target.is_dir():
                target.unlink()
            target.mkdir(exist_ok=True)
            _merge(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
