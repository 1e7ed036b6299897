"""Checks of a dataset plugin (see :mod:`bicycle.data.base`): pairs A [Ca, S, S], B [Cb, S, S] float32 in
[-1, 1], ``get_batch`` aligned with ``__getitem__``, reproducible, and a consistent oracle when provided."""
from __future__ import annotations

import torch
from torch import Tensor

from bicycle.data.base import DatasetRequest, PairedDataset, oracle_of
from bicycle.registry import DatasetSpec
from bicycle.testing.report import CheckSkipped, ConformanceError

SAMPLES = 4


def build_dataset(spec: DatasetSpec, request: DatasetRequest) -> PairedDataset:
    """``spec.build(request)``, checked against the PairedDataset protocol."""
    who = f"dataset {spec.name!r}"
    if spec.needs_path and request.path is None:
        raise ConformanceError(f"{who} reads a folder: give the kit a DatasetRequest with a path")
    ds = spec.build(request)
    if not isinstance(ds, PairedDataset):
        missing = [m for m in ("a_channels", "b_channels", "image_size", "__len__", "__getitem__", "get_batch", "set_epoch")
                   if not hasattr(ds, m)]
        raise ConformanceError(f"{who}: build returned {type(ds).__name__}, missing {', '.join(missing)} of PairedDataset")
    if len(ds) < 1:
        raise ConformanceError(f"{who}: the {request.split} split is empty")
    if ds.image_size != request.image_size:
        raise ConformanceError(f"{who}: image_size is {ds.image_size}, the request asked for {request.image_size}")
    return ds


def _indices(ds: PairedDataset) -> list[int]:
    n = len(ds)
    return sorted({min(i, n - 1) for i in (0, 1, n // 2, n - 1)})[:SAMPLES]


def _check_tensor(who: str, what: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(t, Tensor):
        raise ConformanceError(f"{who}: {what} is {type(t).__name__}, expected a Tensor")
    if tuple(t.shape) != shape:
        raise ConformanceError(f"{who}: {what} has shape {tuple(t.shape)}, expected {shape}")
    if t.dtype != torch.float32:
        raise ConformanceError(f"{who}: {what} has dtype {t.dtype}, expected torch.float32")
    if not torch.isfinite(t).all():
        raise ConformanceError(f"{who}: {what} has NaN or Inf")
    lo, hi = t.min().item(), t.max().item()
    if lo < -1 or hi > 1:
        raise ConformanceError(f"{who}: {what} spans [{lo:.4g}, {hi:.4g}], outside [-1, 1]")


def check_pairs_dtype_and_range(spec: DatasetSpec, ds: PairedDataset) -> str:
    """Every sampled pair: A [Ca, S, S], B [Cb, S, S], float32, finite, within [-1, 1]."""
    s = ds.image_size
    for i in _indices(ds):
        a, b = ds[i]
        _check_tensor(f"dataset {spec.name!r}", f"A of item {i}", a, (ds.a_channels, s, s))
        _check_tensor(f"dataset {spec.name!r}", f"B of item {i}", b, (ds.b_channels, s, s))
    return f"A [{ds.a_channels}, {s}, {s}], B [{ds.b_channels}, {s}, {s}]"


def check_pair_alignment(spec: DatasetSpec, ds: PairedDataset) -> str:
    """``get_batch(indices)`` stacks exactly the pairs ``__getitem__`` gives, A_k with B_k, and the same
    index read twice in the same epoch gives the same pair."""
    who = f"dataset {spec.name!r}"
    idx = _indices(ds)
    ds.set_epoch(0)
    items = [ds[i] for i in idx]
    again = [ds[i] for i in idx]
    a, b = ds.get_batch(idx)
    s = ds.image_size
    _check_tensor(who, "get_batch A", a, (len(idx), ds.a_channels, s, s))
    _check_tensor(who, "get_batch B", b, (len(idx), ds.b_channels, s, s))
    for k, i in enumerate(idx):
        if not (torch.equal(items[k][0], again[k][0]) and torch.equal(items[k][1], again[k][1])):
            raise ConformanceError(f"{who}: item {i} differs between two reads in the same epoch")
        if not torch.equal(a[k], items[k][0]):
            raise ConformanceError(f"{who}: get_batch A[{k}] is not item {i}'s A")
        if not torch.equal(b[k], items[k][1]):
            raise ConformanceError(f"{who}: get_batch B[{k}] is not item {i}'s B (pairs misaligned)")
    return f"{len(idx)} items"


def check_dataset_determinism(spec: DatasetSpec, request: DatasetRequest) -> str:
    """Two datasets built from the same request give identical pairs, also after another epoch was set."""
    who = f"dataset {spec.name!r}"
    d1, d2 = build_dataset(spec, request), build_dataset(spec, request)
    if len(d1) != len(d2):
        raise ConformanceError(f"{who}: two builds have lengths {len(d1)} and {len(d2)}")
    idx = _indices(d1)
    d1.set_epoch(1)
    d1.get_batch(idx)
    for d in (d1, d2):
        d.set_epoch(0)
    x1, x2 = d1.get_batch(idx), d2.get_batch(idx)
    if not (torch.equal(x1[0], x2[0]) and torch.equal(x1[1], x2[1])):
        raise ConformanceError(f"{who}: the same request and epoch give different pairs (seed not honoured?)")
    return ""


def check_oracle(spec: DatasetSpec, ds: PairedDataset) -> str:
    """When ``has_oracle``: ``mode_of`` gives int64 [N] in [0, K) and is deterministic, ``is_valid`` gives
    bool [N], true for the dataset's own pairs and not for uniform noise; ``true_mode(i)`` (if defined)
    agrees with ``mode_of``; ``mode_probabilities`` (if defined) is [N, K] with rows summing to 1."""
    who = f"dataset {spec.name!r}"
    oracle = oracle_of(ds)
    if spec.has_oracle != (oracle is not None):
        raise ConformanceError(f"{who}: has_oracle={spec.has_oracle} but the dataset "
                               + ("provides" if oracle is not None else "does not provide") + " mode_of/is_valid/num_modes")
    if oracle is None:
        raise CheckSkipped("no oracle")
    k = oracle.num_modes
    if not isinstance(k, int) or k < 1:
        raise ConformanceError(f"{who}: num_modes is {k!r}, expected a positive int")
    idx = list(range(min(len(ds), 8)))
    a, b = ds.get_batch(idx)
    n = len(idx)
    modes = oracle.mode_of(a, b)
    if not isinstance(modes, Tensor) or modes.dtype != torch.int64 or tuple(modes.shape) != (n,):
        raise ConformanceError(f"{who}: mode_of must return int64 [{n}], got {getattr(modes, 'dtype', type(modes))} "
                               f"{tuple(getattr(modes, 'shape', ()))}")
    if ((modes < 0) | (modes >= k)).any():
        raise ConformanceError(f"{who}: mode_of of the dataset's own pairs is {modes.tolist()}, outside [0, {k})")
    if not torch.equal(oracle.mode_of(a, b), modes):
        raise ConformanceError(f"{who}: mode_of is not deterministic")
    valid = oracle.is_valid(a, b)
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (n,):
        raise ConformanceError(f"{who}: is_valid must return bool [{n}]")
    if not valid.all():
        raise ConformanceError(f"{who}: is_valid rejects the dataset's own pairs {[i for i, v in zip(idx, valid.tolist()) if not v]}")
    noise = torch.rand(b.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    if oracle.is_valid(a, noise).all():
        raise ConformanceError(f"{who}: is_valid accepts uniform noise as B for every A")
    true_mode = getattr(ds, "true_mode", None)
    if callable(true_mode):
        truth = [int(true_mode(i)) for i in idx]
        if truth != modes.tolist():
            raise ConformanceError(f"{who}: mode_of gives {modes.tolist()}, true_mode gives {truth}")
    probs_fn = getattr(ds, "mode_probabilities", None)
    if callable(probs_fn):
        probs = probs_fn(a)
        if tuple(probs.shape) != (n, k) or not torch.allclose(probs.sum(-1), torch.ones(n), atol=1e-4):
            raise ConformanceError(f"{who}: mode_probabilities must be [{n}, {k}] with rows summing to 1")
    return f"{k} modes, {n} pairs valid"
