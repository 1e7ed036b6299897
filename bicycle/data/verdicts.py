"""The start-up check's verdict cache: which files of a folder were fully decoded without a problem.

Only verdicts are kept (never pixels): per folder, one JSON file under the user's cache directory,
``$XDG_CACHE_HOME/bicycle/image-checks/`` (default ``~/.cache/bicycle/image-checks/``), mapping a file
name to (size, mtime_ns, width, height, mode). A file whose size or mtime changed is decoded again.
Only good verdicts are stored: a bad file is decoded at every start (there are few, and a fix made
without touching the file, e.g. a newer Pillow, is then seen at once).

Safety: nothing is ever written into the data folder (a read-only folder works); the cache file is
replaced atomically; a missing, unreadable or malformed cache file, or one written by another checker
(``CHECKER``), counts as empty; a cache that cannot be written means no caching, said in
:meth:`VerdictCache.save`'s return value. At most ``MAX_FOLDERS`` folders are remembered (the least
recently checked are forgotten), so temporary folders do not pile up.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import PIL

from bicycle.io import atomic_write_bytes

FORMAT = "bicycle-image-verdicts/1"
MAX_FOLDERS = 256  # cache files kept; one per folder checked
CHECKER = f"full decode, Pillow {PIL.__version__}"

Verdict = tuple[int, int, str]  # width, height, mode
_Entry = tuple[int, int, int, int, str]  # size, mtime_ns, width, height, mode


def cache_root() -> Path | None:
    """``$XDG_CACHE_HOME/bicycle`` (an absolute XDG_CACHE_HOME only, as the XDG spec says), else
    ``~/.cache/bicycle``; None when there is no home directory to use."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "bicycle"
    try:
        return Path.home() / ".cache" / "bicycle"
    except RuntimeError:
        return None


def _folder_key(folder: Path) -> str:
    return str(Path(os.path.abspath(folder)).resolve())


def _parse(text: str, folder: str) -> dict[str, _Entry]:
    """The entries of a cache file's text; {} for anything not written by this checker for ``folder``."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("checker") != CHECKER \
            or data.get("folder") != folder or not isinstance(data.get("files"), dict):
        return {}
    out: dict[str, _Entry] = {}
    for name, e in data["files"].items():
        if (isinstance(e, list) and len(e) == 5 and all(type(v) is int for v in e[:4])
                and isinstance(e[4], str)):
            out[name] = (e[0], e[1], e[2], e[3], e[4])
    return out


class VerdictCache:
    """The good verdicts of one folder: :meth:`get` what is known, :meth:`put` what was just decoded,
    :meth:`save` once at the end (which keeps exactly the files seen by this check)."""

    def __init__(self, folder: str | Path, root: Path | None = None) -> None:
        self.folder = _folder_key(Path(folder))
        root = cache_root() if root is None else root
        digest = hashlib.sha256(self.folder.encode()).hexdigest()[:32]
        self.file: Path | None = root / "image-checks" / f"{digest}.json" if root is not None else None
        self._old = self._read()
        self._seen: dict[str, _Entry] = {}

    def _read(self) -> dict[str, _Entry]:
        if self.file is None:
            return {}
        try:
            return _parse(self.file.read_text(encoding="utf-8"), self.folder)
        except (OSError, UnicodeDecodeError):
            return {}

    def get(self, name: str, size: int, mtime_ns: int) -> Verdict | None:
        e = self._old.get(name)
        if e is None or (e[0], e[1]) != (size, mtime_ns):
            return None
        self._seen[name] = e
        return e[2], e[3], e[4]

    def put(self, name: str, size: int, mtime_ns: int, verdict: Verdict) -> None:
        self._seen[name] = (size, mtime_ns, *verdict)

    def save(self) -> str | None:
        """Write the verdicts seen, if they differ from the file's; None, or why it could not be written."""
        if self.file is None:
            return "no home directory for a cache"
        if self._seen == self._old:
            return None
        data = {"format": FORMAT, "checker": CHECKER, "folder": self.folder,
                "files": {k: list(v) for k, v in sorted(self._seen.items())}}
        try:
            atomic_write_bytes(self.file, json.dumps(data, separators=(",", ":")).encode())
            _prune(self.file.parent, keep=self.file)
        except OSError as e:
            return f"cannot write {self.file}: {e.strerror or e}"
        self._old = dict(self._seen)
        return None


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _prune(folder: Path, keep: Path) -> None:
    """At most :data:`MAX_FOLDERS` cache files: the least recently written go (e.g. those of temporary folders)."""
    others = [p for p in folder.glob("*.json") if p != keep]
    for old in sorted(others, key=_mtime_ns)[: max(0, len(others) + 1 - MAX_FOLDERS)]:
        old.unlink(missing_ok=True)
