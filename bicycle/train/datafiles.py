"""What a run records about the files it trains on: a manifest per split in every checkpoint (the data
fingerprint), the comparison a ``--resume`` makes against it, and ``RUN/bad_images.txt``.

A dataset takes part when it has ``files`` (a list of (name, size, mtime_ns) of the files it uses, as
:class:`~bicycle.data.aligned.AlignedDataset` has) and, for the list, ``bad_images``. Generated datasets
(``shapes``) have no files: their parameters are in the config every checkpoint holds.

A resume over changed files is a warning, not an error: the batch order is a function of (seed, epoch,
index) over whatever files there are, so training goes on well defined, and a changed folder is often
meant (bad files removed after a ``--bad-images error`` stop, a copy to another machine that did not keep
mtimes). What it costs, that the run is no longer an exact continuation, is what the warning says.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bicycle.io import atomic_write_bytes, writing

MANIFEST_KEY = "data_manifest"
BAD_LIST = "bad_images.txt"


def run_splits(train: object, val: object) -> dict[str, object]:
    """The datasets a run uses, by split; val only when it is not the train dataset itself (no val/)."""
    return {"train": train} if val is train else {"train": train, "val": val}


def fingerprint(files: list[tuple[str, int, int]]) -> str:
    """sha256 of the sorted (name, size, mtime_ns) of the files."""
    return hashlib.sha256(json.dumps(sorted(files), separators=(",", ":")).encode()).hexdigest()


def manifests(splits: dict[str, object]) -> dict[str, dict]:
    """{split: {"folder", "count", "sha256", "files"}} for the datasets that read files."""
    out: dict[str, dict] = {}
    for split, ds in splits.items():
        files = getattr(ds, "files", None)
        if files is None:
            continue
        files = sorted(tuple(f) for f in files)
        out[split] = {"folder": str(getattr(ds, "folder", "")), "count": len(files), "sha256": fingerprint(files),
                      "files": [list(f) for f in files]}
    return out


def manifest_metadata(current: dict[str, dict]) -> dict[str, str]:
    """The checkpoint metadata entry for ``current`` (none for datasets without files)."""
    return {MANIFEST_KEY: json.dumps(current, separators=(",", ":"))} if current else {}


def _by_name(manifest: dict | None) -> dict[str, tuple[int, int]]:
    return {str(f[0]): (int(f[1]), int(f[2])) for f in (manifest or {}).get("files", [])}


def resume_data_warning(metadata: dict[str, str], current: dict[str, dict]) -> str | None:
    """One line when the files differ from those recorded in a checkpoint's ``metadata``; None when they are
    the same or the checkpoint predates manifests."""
    raw = metadata.get(MANIFEST_KEY)
    if raw is None:
        return None
    try:
        stored = json.loads(raw)
        parts = []
        for split in [s for s in ("train", "val") if s in stored or s in current]:
            old, new = stored.get(split), current.get(split)
            if old is not None and new is not None and old.get("sha256") == new["sha256"]:
                continue
            a, b = _by_name(old), _by_name(new)
            changed = sum(a[k] != b[k] for k in a.keys() & b.keys())
            parts.append(f"{split}: {len(b.keys() - a.keys())} added, {len(a.keys() - b.keys())} removed, "
                         f"{changed} changed")
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return "warning: the checkpoint's data manifest is unreadable: cannot tell whether the data changed"
    if not parts:
        return None
    return (f"warning: the data differs from the checkpoint's ({'; '.join(parts)}): resuming on the files as "
            f"they are now, so the run is no longer an exact continuation")


def write_bad_list(run_dir: Path, splits: dict[str, object]) -> str | None:
    """``RUN/bad_images.txt`` (``path<TAB>reason`` per line) for the files left out, and a line saying so;
    a stale list is removed when nothing was left out. Raises StorageError when the run dir cannot be written."""
    bad = [b for ds in splits.values() for b in getattr(ds, "bad_images", ())]
    path = run_dir / BAD_LIST
    with writing(path):  # an OSError: one StorageError line naming the file
        if not bad:
            path.unlink(missing_ok=True)
            return None
        atomic_write_bytes(path, "".join(f"{b.path}\t{b.reason}\n" for b in bad).encode())
    return f"left out {len(bad)} bad image{'s' if len(bad) != 1 else ''} (--bad-images skip): listed in {path}"
