"""ONNX export of a trained model: G(A, z) -> B, and E(B) -> (mu, logvar) beside it, for inference without PyTorch.

Files: ``PATH`` holds G, inputs ``A`` float32 [N, in_channels, S, S] and ``z`` float32 [N, nz], output ``B``
float32 [N, out_channels, S, S]; ``<PATH stem>.encoder.onnx`` (models with an encoder) holds E, input ``B``,
outputs ``mu`` and ``logvar`` float32 [N, nz]. N is dynamic (exported at 1). Random styles: z ~ N(0, I);
the style of a reference image: z = mu of the encoder. Images are in [-1, 1] (x = u8 / 127.5 - 1).
Each file's ``metadata_props`` (keys ``bicycle.*``) say so, with the config, the step and the version.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript's torchlib), opset
:data:`OPSET`. The TorchScript exporter (``dynamo=False``) exports these networks too, about 10x faster, but
it is deprecated, and it traces: a plugin backbone that branches on tensor values (``if x.sum().item() > 0``)
is exported with the branch taken by the example input, silently; torch.export refuses it instead.

Check: both files are run with onnxruntime (CPU) at batch :data:`CHECK_BATCH` on seeded inputs and compared
with PyTorch (max abs difference <= :data:`TOLERANCE`). Nothing is written unless every network exported
(and, with the check, passed it); the files are written atomically.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bicycle.config import RunConfig
from bicycle.errors import ExportError
from bicycle.nets import Nets

FORMAT = "bicycle-onnx/1"
OPSET = 18  # onnxruntime >= 1.14; nothing these networks use changed in opsets 19-20 (torch's default is 20)
TOLERANCE = 1e-4
CHECK_BATCH = 3
CHECK_SEED = 0
PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file (weights inside) is one protobuf message
NOT_INSTALLED = "not checked: onnxruntime is not installed (pip install 'bicycle[onnx]')"
NORMALISATION = ("inputs and outputs in [-1, 1]: x = u8 / 127.5 - 1 (back: u8 = round((x + 1) * 127.5), "
                 "clipped to [0, 255]); channels first, float32")
CHANNELS = ("an image is converted to the model's channel count first: RGB -> 1 channel by ITU-R 601 luma "
            "(L = 0.299 R + 0.587 G + 0.114 B), grey (1 channel) -> 3 channels by repetition")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript")


def encoder_path(path: Path) -> Path:
    """Where E goes beside G's ``path``: ``model.onnx`` -> ``model.encoder.onnx``."""
    return path.with_name(f"{path.stem}.encoder.onnx")


def export_onnx(nets: Nets, config: RunConfig, path: Path, *, backbone_plugin: str, check: bool = True,
                echo: Callable[[str], None] = print, step: int | None = None) -> dict[str, Any]:
    """Export G to ``path`` and E (when ``nets.E`` is not None) to :func:`encoder_path` (``path``).

    ``backbone_plugin``: the plugin that registered ``config.net.backbone`` (named when G cannot be exported);
    ``step``: the checkpoint's step, written into the metadata. ``check``: compare onnxruntime with PyTorch
    (skipped with a note when onnxruntime is not installed). Returns the report: ``files``, ``sizes`` (bytes)
    and ``max_abs_diff`` by network ("G", "E"), ``check`` (one line), ``opset``, ``exporter``.
    Raises :class:`ExportError` (one line; nothing written) when a network cannot be exported or fails the check;
    the networks' train/eval modes are restored afterwards."""
    _need_exporter()
    path = Path(path)
    n = config.net
    e_path = encoder_path(path)
    jobs: list[tuple[str, Path, nn.Module, tuple[Tensor, ...], list[str], list[str], str]] = []
    g_what = f"backbone {n.backbone!r} of plugin {backbone_plugin!r} (injector {n.inject!r})"
    jobs.append(("G", path, nets.G, _example_g(nets.G, config, 1), ["A", "z"], ["B"], g_what))
    if nets.E is not None:
        jobs.append(("E", e_path, nets.E, _example_e(nets.E, config, 1), ["B"], ["mu", "logvar"],
                     f"encoder {n.encoder!r}"))

    models: dict[str, Any] = {}
    with _eval_mode(*(job[2] for job in jobs)):
        for role, p, module, example, inputs, outputs, what in jobs:
            model = _export(module, example, inputs, outputs, what)
            _set_metadata(model, _metadata(config, role, backbone_plugin=backbone_plugin, step=step,
                                           partner=(e_path.name if role == "G" and nets.E is not None else
                                                    path.name if role == "E" else None)))
            models[role] = model
        data = {role: _serialise(models[role], p) for role, p, *_ in jobs}

        diffs: dict[str, float] = {}
        if not check:
            check_line = "not checked (check=False)"
        elif (ort := _onnxruntime()) is None:
            check_line = NOT_INSTALLED
        else:
            for role, p, module, _, inputs, outputs, _ in jobs:
                example = (_example_g if role == "G" else _example_e)(module, config, CHECK_BATCH)
                diffs[role] = _check(ort, data[role], p, module, example, inputs)
            check_line = (f"checked with onnxruntime {ort.__version__} (CPU) at batch {CHECK_BATCH}: max abs difference "
                          + ", ".join(f"{role} {d:.2e}" for role, d in diffs.items()) + f" (<= {TOLERANCE:g})")

    _write(data, {role: p for role, p, *_ in jobs})
    opset = _opset(models["G"])
    for role, p, *_ in jobs:
        echo(f"wrote {p}: {'G(A, z) -> B' if role == 'G' else 'E(B) -> mu, logvar'}, "
             f"{len(data[role]) / 2**20:.2f} MiB, ONNX opset {opset}")
    echo(check_line)
    if nets.E is None and e_path.exists():
        echo(f"note: {e_path} is not from this export (this model has no encoder); left as it was")
    return {
        "files": {role: str(p) for role, p, *_ in jobs},
        "sizes": {role: len(data[role]) for role, *_ in jobs},
        "max_abs_diff": diffs,
        "check": check_line,
        "checked": bool(diffs),
        "tolerance": TOLERANCE,
        "opset": opset,
        "exporter": _exporter_name(),
    }


# --- export ---------------------------------------------------------------------------------------------

def _need_exporter() -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}, not installed here: pip install 'bicycle[onnx]'")


def _exporter_name() -> str:
    import onnxscript
    return (f"torch.onnx.export(dynamo=True) (torch.export + onnxscript): torch {torch.__version__}, "
            f"onnxscript {onnxscript.__version__}")


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _example_g(G: nn.Module, config: RunConfig, batch: int) -> tuple[Tensor, Tensor]:
    n = config.net
    g = torch.Generator().manual_seed(CHECK_SEED)
    a = torch.rand(batch, n.in_channels, n.image_size, n.image_size, generator=g) * 2 - 1
    z = torch.randn(batch, n.nz, generator=g)
    dev = _device(G)
    return a.to(dev), z.to(dev)


def _example_e(E: nn.Module, config: RunConfig, batch: int) -> tuple[Tensor]:
    n = config.net
    g = torch.Generator().manual_seed(CHECK_SEED + 1)
    b = torch.rand(batch, n.out_channels, n.image_size, n.image_size, generator=g) * 2 - 1
    return (b.to(_device(E)),)


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Every module (and submodule) in eval mode inside; each one's own mode restored afterwards."""
    saved = [(net, [(m, m.training) for m in net.modules()]) for net in modules]
    for net in modules:
        net.eval()
    try:
        yield
    finally:
        for net, modes in saved:
            net.train(modes[0][1])
            for m, mode in modes:
                m.training = mode


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's chatter off: warnings, log lines (e.g. "torchvision is not installed"), and the partial
    graph torch.export prints to stderr when it fails. Our own error says what went wrong."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(module: nn.Module, example: tuple[Tensor, ...], inputs: list[str], outputs: list[str], what: str):
    """``module`` -> onnx.ModelProto with a dynamic batch dimension on every input and output."""
    batch = torch.export.Dim("N")
    try:
        with _quiet():
            program = torch.onnx.export(module, example, None, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=tuple({0: batch} for _ in example), opset_version=OPSET,
                                        dynamo=True, verbose=False, optimize=True, external_data=False)
            if program is None:
                raise RuntimeError("the exporter returned no program")
            model = program.model_proto
    except (Exception, SystemExit) as exc:
        raise ExportError(f"cannot export {what} to ONNX: {_reason(exc)}") from exc
    # torch.onnx makes a dimension static when torch.export finds the code fixes it ("suggested fixes"): refuse
    fixed = [v.name for v in list(model.graph.input) + list(model.graph.output)
             if not (v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_param)]
    if fixed:
        raise ExportError(f"cannot export {what} to ONNX with a dynamic batch size: the network fixes the batch "
                          f"dimension of {', '.join(fixed)} (at {example[0].shape[0]})")
    return model


def _reason(exc: BaseException) -> str:
    """The exporter's own reason in one line: the innermost exception's message (its first line; torch's
    wrappers add pages of advice around it), and where in user code it was raised, when that is known."""
    root = exc
    seen = {id(root)}
    while (nxt := root.__cause__ if root.__cause__ is not None else
           None if root.__suppress_context__ else root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    line = lines[0] if lines else "(no message)"
    if len(line) > 300:
        line = line[:297] + "..."
    where = _user_frame(root)
    return f"{type(root).__name__}: {line}" + (f" (at {where})" if where else "")


def _user_frame(exc: BaseException) -> str | None:
    """file:line in function of the last traceback frame outside torch, onnx(script) and bicycle.export."""
    torch_dir = str(Path(torch.__file__).parent)
    skip = (torch_dir, str(Path(__file__).parent), "onnxscript", f"{Path('site-packages') / 'onnx'}")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not any(s in f.filename for s in skip) and "contextlib" not in f.filename]
    if not frames:
        return None
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# --- metadata -------------------------------------------------------------------------------------------

def _metadata(config: RunConfig, role: str, *, backbone_plugin: str, step: int | None,
              partner: str | None) -> dict[str, str]:
    import bicycle

    n, s = config.net, config.net.image_size
    meta = {
        "bicycle.format": FORMAT,
        "bicycle.network": "G" if role == "G" else "E",
        "bicycle.version": bicycle.__version__,
        "bicycle.step": "" if step is None else str(step),
        "bicycle.model": config.train.model,
        "bicycle.image_size": str(s),
        "bicycle.nz": str(n.nz),
        "bicycle.in_channels": str(n.in_channels),
        "bicycle.out_channels": str(n.out_channels),
        "bicycle.normalization": NORMALISATION,
        "bicycle.channels": CHANNELS,
        "bicycle.backbone": n.backbone,
        "bicycle.backbone_plugin": backbone_plugin,
        "bicycle.injector": n.inject,
        "bicycle.encoder": n.encoder,
        "bicycle.config": config.to_json(),
    }
    if role == "G":
        meta["bicycle.inputs"] = (f"A: float32 [N, {n.in_channels}, {s}, {s}]; z: float32 [N, {n.nz}] "
                                  f"(random styles: z ~ N(0, I); a reference image's style: mu of the encoder)")
        meta["bicycle.outputs"] = f"B: float32 [N, {n.out_channels}, {s}, {s}]"
        if partner:
            meta["bicycle.encoder_file"] = partner
    else:
        meta["bicycle.inputs"] = f"B: float32 [N, {n.out_channels}, {s}, {s}]"
        meta["bicycle.outputs"] = f"mu: float32 [N, {n.nz}]; logvar: float32 [N, {n.nz}]"
        if partner:
            meta["bicycle.generator_file"] = partner
    return meta


def _set_metadata(model, meta: dict[str, str]) -> None:
    import onnx

    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **meta})
    role = "generator G(A, z) -> B" if meta["bicycle.network"] == "G" else "encoder E(B) -> (mu, logvar)"
    model.doc_string = f"bicycle {meta['bicycle.version']}: BicycleGAN {role}; see metadata_props bicycle.*"


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# --- check and write ------------------------------------------------------------------------------------

def _serialise(model, path: Path) -> bytes:
    size = model.ByteSize()
    if size > PROTOBUF_LIMIT:
        raise ExportError(f"cannot export {path}: the model is {size / 2**30:.1f} GiB, over the 2 GiB a single ONNX "
                          f"file can hold")
    return model.SerializeToString()


def _onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        return None


def _check(ort, data: bytes, path: Path, module: nn.Module, example: tuple[Tensor, ...], inputs: list[str]) -> float:
    """Max abs difference between onnxruntime (CPU) and PyTorch on ``example``; ExportError above TOLERANCE."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        got = session.run(None, {name: x.detach().cpu().numpy() for name, x in zip(inputs, example)})
    except Exception as exc:  # an op or shape onnxruntime refuses
        raise ExportError(f"ONNX check failed for {path}: onnxruntime cannot run it: {_reason(exc)}; "
                          f"nothing written") from exc
    with torch.no_grad():
        want = module(*example)
    want = [want] if isinstance(want, Tensor) else list(want)
    if len(got) != len(want):
        raise ExportError(f"ONNX check failed for {path}: {len(got)} outputs, PyTorch gives {len(want)}; nothing written")
    diffs = []
    for g, w in zip(got, want):
        g_t = torch.from_numpy(g)
        if g_t.shape != w.shape:
            raise ExportError(f"ONNX check failed for {path}: output shape {tuple(g_t.shape)} at batch "
                              f"{example[0].shape[0]}, PyTorch gives {tuple(w.shape)}; nothing written")
        diffs.append(float((g_t.double() - w.detach().cpu().double()).abs().max()) if w.numel() else 0.0)
    diff = float("nan") if any(d != d for d in diffs) else max(diffs, default=0.0)  # NaN: a failure
    if not diff <= TOLERANCE:
        raise ExportError(f"ONNX check failed for {path}: max abs difference {diff:.3g} between onnxruntime and "
                          f"PyTorch at batch {example[0].shape[0]} (tolerance {TOLERANCE:g}); nothing written")
    return diff


def _write(data: dict[str, bytes], paths: dict[str, Path]) -> None:
    """Each file atomically; E first, then G; when G cannot be written, E is removed again."""
    from bicycle.io import atomic_write_bytes, writing

    done: list[Path] = []
    try:
        for role in sorted(paths, key=lambda r: r != "E"):
            with writing(paths[role]):
                atomic_write_bytes(paths[role], data[role])
            done.append(paths[role])
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise
