"""Checkpoints: safetensors only (nothing pickled), the resolved config inside, atomic writes.

Layout of a checkpoint file's tensors:
  ``G.<name>``, ``E.<name>``, ``D.<name>``, ``D2.<name>``   network state dicts
  ``opt.<net>.<i>.<key>``                                  Adam state of parameter i (exp_avg, ...)
  ``rng.torch`` (+ ``rng.cuda``)                            RNG states (uint8)
  ``ema.G.<name>``, ``ema.E.<name>``                        moving averages of G and E (``--ema``; absent without)
Metadata (strings): format, config (JSON), step, data position, optimizer param groups (JSON), and
``digests``: the SHA-256 of each tensor's bytes (JSON, :mod:`bicycle.digests`), checked at every load.

Inference weights (``bicycle export``, format ``bicycle-weights/1``) hold ``G.*`` and ``E.*`` only (the moving
averages when the run kept them), in float32, float16 or bfloat16, with the config, the step and the checkpoint
they came from.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from bicycle.config import RunConfig
from bicycle.digests import DIGESTS_KEY, tensor_digests, verify_digests
from bicycle.errors import CheckpointError, ConfigError, NonFiniteError, StorageError
from bicycle.nets import Nets

FORMAT = "bicycle-checkpoint/1"
WEIGHTS_FORMAT = "bicycle-weights/1"
NETWORKS = ("G", "E", "D", "D2")
EMA_PREFIX = "ema."  # the moving averages of G and E
EXPORTED_WEIGHTS = "weights"  # exported weights' metadata: which weights they are, "ema" or "raw"
LATEST = "latest"


TMP_SUFFIX = ".tmp"


@functools.cache
def _file_mode() -> int:
    """0o666 minus the process umask: what ``open`` would give a new file (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_replace(path: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(tmp_path)`` to a temporary file in the same folder, fsync it, rename it
    over ``path`` and fsync the folder: ``path`` is always either the old or the complete new file.
    The temporary file is ``.<name>.<random>.tmp`` (:func:`remove_stale_temporaries` clears leftovers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def writing(what: str | Path, after: str = "") -> Iterator[None]:
    """An OSError while writing (disk full, permission, read-only) becomes one :class:`StorageError` line naming
    the path; ``after`` is appended (e.g. which checkpoint is still intact)."""
    try:
        yield
    except SafetensorError as exc:  # safetensors reports its own failed writes (ENOSPC, EFBIG, EIO) this way
        raise StorageError(f"cannot write {what}: {exc}" + (f"; {after}" if after else "")) from exc
    except OSError as exc:
        named = exc.filename and not _temporary(Path(str(exc.filename)).name)  # a temporary: name the target
        path = exc.filename if named else what
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"cannot write {path}: {reason}" + (f"; {after}" if after else "")) from exc


# safetensors' save_file writes its own ".tmpXXXXXX" next to its target and renames it over ours.
_WRITER_TMP = re.compile(r"^\.tmp[A-Za-z0-9_]{6,}$")


def _temporary(name: str) -> bool:
    return (name.startswith(".") and name.endswith(TMP_SUFFIX)) or bool(_WRITER_TMP.match(name))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder``; returns them."""
    stale = sorted(p for p in folder.iterdir() if p.is_file() and _temporary(p.name)) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_replace(path, lambda tmp: Path(tmp).write_bytes(data))


def _atomic_save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    metadata = {**metadata, DIGESTS_KEY: json.dumps(tensor_digests(tensors), sort_keys=True)}
    _atomic_replace(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


@dataclass
class Checkpoint:
    path: Path
    config: RunConfig
    step: int
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    size: int = 0  # bytes of the file when it was read (it may be pruned since)

    @property
    def weights_only(self) -> bool:
        """Exported inference weights (G and E; no discriminators, no optimizer state)."""
        return self.metadata.get("format") == WEIGHTS_FORMAT


def _state_tensors(nets: Nets) -> dict[str, Tensor]:
    out = {}
    for name, module in nets.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().cpu().contiguous()
    return out


def nonfinite_tensors(tensors: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors (weights, optimizer state; not RNG states) holding NaN or inf."""
    return sorted(k for k, t in tensors.items()
                  if not k.startswith("rng.") and t.is_floating_point() and not bool(torch.isfinite(t).all()))


def save_checkpoint(path: Path, config: RunConfig, nets: Nets, step: int,
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    extra_meta: dict[str, str] | None = None, extra_tensors: dict[str, Tensor] | None = None) -> Path:
    """Write a checkpoint atomically: a good file is never replaced by a partial one. Non-finite weights or
    optimizer state are refused (:class:`NonFiniteError`): a diverged run never overwrites good checkpoints."""
    tensors = _state_tensors(nets)
    meta = {"format": FORMAT, "config": config.to_json(), "step": str(step)}
    if optimizers is not None:
        for name, opt in optimizers.items():
            sd = opt.state_dict()
            meta[f"opt.{name}.param_groups"] = json.dumps(sd["param_groups"])
            for idx, state in sd["state"].items():
                for key, value in state.items():
                    t = value if isinstance(value, Tensor) else torch.tensor(value)
                    tensors[f"opt.{name}.{idx}.{key}"] = t.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors.update(extra_tensors or {})
    meta.update(extra_meta or {})
    bad = nonfinite_tensors(tensors)
    if bad:
        raise NonFiniteError(f"refusing to write {path} at step {step}: non-finite values in {_names(bad)}")
    _atomic_save_tensors(path, tensors, meta)
    return path


def save_weights(path: Path, config: RunConfig, nets: Nets, step: int, dtype: torch.dtype = torch.float32,
                 source: str = "", extra: dict[str, Tensor] | None = None, weights: str = "raw") -> Path:
    """Write G's and E's weights (cast to ``dtype``) with the config, atomically: what ``bicycle.load`` and
    ``bicycle sample`` need, nothing for training. Values that ``dtype`` cannot hold are refused. ``extra``:
    tensors stored as they are (the run's aggregate posterior, ``posterior.*``); ``weights``: which weights ``nets``
    hold, ``"ema"`` (the moving averages) or ``"raw"``, recorded in the metadata."""
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in _state_tensors(nets).items()
               if k.split(".", 1)[0] in ("G", "E")}
    tensors.update(extra or {})
    bad = nonfinite_tensors(tensors)
    source_bad = nonfinite_tensors({k: v for k, v in _state_tensors(nets).items() if k in tensors} | (extra or {}))
    if source_bad:
        raise NonFiniteError(f"refusing to write {path}: {_names(source_bad)} hold NaN or inf")
    if bad:
        raise NonFiniteError(f"refusing to write {path}: {_names(bad)} do not fit in {str(dtype).removeprefix('torch.')}; "
                             f"export in float32")
    meta = {"format": WEIGHTS_FORMAT, "config": config.to_json(), "step": str(step),
            "dtype": str(dtype).removeprefix("torch."), "source": source, EXPORTED_WEIGHTS: weights}
    _atomic_save_tensors(path, tensors, meta)
    return path


def _checkpoint_folder(p: Path) -> Path:
    return p / "checkpoints" if (p / "checkpoints").is_dir() else p


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A file, or a run dir / its checkpoints/ folder (then its newest checkpoint file, unread: :func:`load_checkpoint`
    is what skips a damaged one)."""
    p = Path(path)
    if p.is_dir():
        names = [f for f in _candidates(_checkpoint_folder(p)) if f.is_file()]
        if not names:
            raise CheckpointError(f"no checkpoint in {p}: {_checkpoint_folder(p) / LATEST} does not exist")
        p = names[0]
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p


def _candidates(folder: Path) -> list[Path]:
    """The checkpoints of ``folder``, newest first: every ``step_*.safetensors`` (each complete, written
    atomically; ``latest`` may lag one behind after a crash between the rename and its own update, so the
    newest file wins), and the one ``latest`` names even when it is missing (it is then skipped with the
    others that cannot be read)."""
    files = {f.name: f for f in folder.glob("step_*.safetensors")}
    latest = folder / LATEST
    with contextlib.suppress(OSError, UnicodeDecodeError):
        named = latest.read_text().strip()
        if named and "/" not in named and named not in files:
            files[named] = folder / named
    return [files[k] for k in sorted(files, reverse=True)]


class _Vanished(Exception):
    """The checkpoint file disappeared between the listing and the read (pruned by a training run)."""


_WARNED: set[str] = set()


def _warn(line: str) -> None:
    """To stderr, once per process (``--resume`` reads the run's checkpoint twice: for its config, then under the lock)."""
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr, flush=True)


def load_checkpoint(path: str | Path, warn: Callable[[str], None] = _warn) -> Checkpoint:
    """A checkpoint file, or a run dir / its checkpoints/ folder: then its newest intact checkpoint. A file that
    is missing, truncated or changed since it was written (a tensor whose digest differs) is refused when named,
    and skipped with one ``warning:`` line through ``warn`` when it is the newest of a run dir (``latest``
    included). A checkpoint pruned by a training run between the listing and the read is looked up again
    once. Non-finite weights are always refused (:class:`NonFiniteError`)."""
    p = Path(path)
    if not p.is_dir():
        if not p.is_file():
            raise CheckpointError(f"checkpoint {p} does not exist")
        try:
            return _read_checkpoint(p)
        except _Vanished:
            raise CheckpointError(f"checkpoint {p} does not exist") from None
    folder = _checkpoint_folder(p)
    for attempt in (0, 1):
        names = _candidates(folder)
        if not names:
            raise CheckpointError(f"no checkpoint in {p}: {folder / LATEST} does not exist")
        skipped: list[tuple[Path, CheckpointError]] = []
        for f in names:
            try:
                ckpt = _read_checkpoint(f)
            except _Vanished:
                if attempt == 0:  # pruned under us, or `latest` names a missing file: list again, once
                    break
                skipped.append((f, CheckpointError(f"{f} is missing")))
                continue
            except NonFiniteError as exc:
                if not getattr(exc, "damaged", False):
                    raise
                skipped.append((f, exc))
                continue
            except CheckpointError as exc:
                skipped.append((f, exc))
                continue
            if skipped:
                why = "; ".join(_short(e) for _, e in skipped)
                warn(f"warning: {why}: using {f} (step {ckpt.step}), the newest intact checkpoint of {p}")
            return ckpt
        else:
            raise skipped[0][1]
    raise CheckpointError(f"no checkpoint in {p} could be read: they were replaced while reading (is a run pruning it?)")


def _short(exc: CheckpointError) -> str:
    return str(exc).split("; ")[0]


def _read_checkpoint(p: Path) -> Checkpoint:
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_len = int.from_bytes(f.read(8), "little")
            if header_len > size - 8:
                raise CheckpointError(f"checkpoint {p} is truncated ({size} bytes, its header alone claims "
                                      f"{header_len})")
            header = json.loads(f.read(header_len))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        if 8 + header_len + max(ends, default=0) > size:
            raise CheckpointError(f"checkpoint {p} is truncated ({size} bytes of "
                                  f"{8 + header_len + max(ends, default=0)})")
        tensors = load_file(str(p))
    except FileNotFoundError:
        raise _Vanished(p) from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc}") from exc
    meta = header.get("__metadata__", {}) or {}
    if meta.get("format") not in (FORMAT, WEIGHTS_FORMAT):
        raise CheckpointError(f"{p} is not a bicycle checkpoint (format {meta.get('format')!r}, expected {FORMAT!r} "
                              f"or {WEIGHTS_FORMAT!r})")
    changed = verify_digests(tensors, meta.get(DIGESTS_KEY))
    bad = nonfinite_tensors(tensors)
    if bad and changed:  # damage that made NaN/inf (a flipped exponent bit): a changed file like any other
        exc = NonFiniteError(f"checkpoint {p} changed after it was written: {changed}; it holds non-finite values "
                             f"(NaN or inf) in {_names(bad)}")
        exc.damaged = True
        raise exc
    if changed:
        raise CheckpointError(f"checkpoint {p} changed after it was written: {changed}")
    if bad:
        raise NonFiniteError(f"checkpoint {p} holds non-finite values (NaN or inf) in {_names(bad)}: the run had "
                             f"diverged when it was written; use an earlier checkpoint")
    try:
        config = RunConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {p} has an unreadable config: {exc}") from exc
    try:
        step = int(meta.get("step", 0))
    except ValueError:
        raise CheckpointError(f"checkpoint {p} has an unreadable step {meta.get('step')!r} in its metadata") from None
    return Checkpoint(p, config, step, tensors, meta, size)


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_networks(ckpt: Checkpoint, nets: Nets) -> None:
    """Load weights strictly: missing/unexpected tensors and shape mismatches are named. Tensors of a network
    that ``nets`` does not hold (a full checkpoint's discriminators, loaded for inference) are not read."""
    expected = _state_tensors(nets)
    built = {name for name, _ in nets.items()}
    stored = {k: v for k, v in ckpt.tensors.items()
              if not k.startswith(("opt.", "rng.", "posterior.", EMA_PREFIX)) and not (k.split(".", 1)[0] in NETWORKS and k.split(".", 1)[0] not in built)}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    problems = []
    absent = [name for name in sorted(built) if not any(k.startswith(f"{name}.") for k in stored)]
    if absent and ckpt.weights_only:
        raise CheckpointError(f"{ckpt.path} holds inference weights (G and E) only, no {', '.join(absent)}: "
                              f"it translates but cannot resume training")
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_names(unexpected)}")
    shapes = [f"{k} {tuple(stored[k].shape)} vs config {tuple(v.shape)}"
              for k, v in expected.items() if k in stored and stored[k].shape != v.shape]
    if shapes:
        problems.append(f"shape mismatch (the config does not match the tensors): {_names(shapes)}")
    if problems:
        raise CheckpointError(f"checkpoint {ckpt.path}: " + "; ".join(problems))
    for name, module in nets.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)})


def has_average(ckpt: Checkpoint) -> bool:
    """True when ``ckpt`` holds moving averages of G and E (``ema.*``)."""
    return any(k.startswith(EMA_PREFIX) for k in ckpt.tensors)


def load_average(ckpt: Checkpoint, nets: Nets) -> None:
    """Load ``ckpt``'s moving averages into ``nets`` (G, and E when it has one), as strictly as :func:`load_networks`."""
    view = Checkpoint(ckpt.path, ckpt.config, ckpt.step,
                      {k[len(EMA_PREFIX):]: v for k, v in ckpt.tensors.items() if k.startswith(EMA_PREFIX)}, ckpt.metadata)
    load_networks(view, nets)


# Adam options that choose an implementation for the device at hand (a checkpoint written on a CPU
# resumes with the CUDA choices on a GPU, and the other way round).
EXECUTION_KEYS = ("capturable", "fused", "foreach", "differentiable")


def load_optimizers(ckpt: Checkpoint, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for name, opt in optimizers.items():
        key = f"opt.{name}.param_groups"
        if key not in ckpt.metadata:
            if ckpt.weights_only:
                raise CheckpointError(f"{ckpt.path} holds inference weights only: it translates but cannot resume training")
            raise CheckpointError(f"checkpoint {ckpt.path} has no optimizer state for {name}: it cannot resume training")
        groups = json.loads(ckpt.metadata[key])
        for saved, current in zip(groups, opt.param_groups):  # how to run here, not training state
            saved.update({k: current[k] for k in EXECUTION_KEYS if k in current})
        prefix = f"opt.{name}."
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in ckpt.tensors.items():
            if k.startswith(prefix):
                idx, key2 = k[len(prefix):].split(".", 1)
                state.setdefault(int(idx), {})[key2] = v
        opt.load_state_dict({"state": state, "param_groups": groups})
    if "rng.torch" in ckpt.tensors:
        torch.set_rng_state(ckpt.tensors["rng.torch"])
    if "rng.cuda" in ckpt.tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(ckpt.tensors["rng.cuda"])


def write_latest(folder: Path, filename: str) -> None:
    atomic_write_bytes(folder / LATEST, (filename + "\n").encode())
