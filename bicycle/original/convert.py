"""``bicycle convert-original``: the original BicycleGAN's released ``latest_net_G.pth`` / ``latest_net_E.pth``
(state dicts, read without unpickling code) -> a bicycle run dir that ``sample``, ``eval``, ``export`` and
:func:`bicycle.inference.loading.load_model` use unchanged.

The tensors determine the architecture (:mod:`bicycle.original.layout`); the original's flags
(:class:`OriginalFlags`) give the rest (image size, direction, data, dropout) and are checked against the
tensors where those determine them.
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bicycle.errors import CheckpointError, ConfigError, ExportError, NonFiniteError
from bicycle.original import layout as L

CHECKPOINT = "step_00000000.safetensors"
NO_DATA = "(none: give --data PATH)"  # data.data of a run converted without --dataroot
DEFAULT_NZ = 8  # the original's --nz default
MAX_NAMES = 6


@dataclass(frozen=True)
class OriginalFlags:
    """The original's options (options/base_options.py spellings) that matter to a conversion; None: not given."""

    netG: str | None = None
    netE: str | None = None
    where_add: str | None = None
    upsample: str | None = None
    norm: str | None = None
    nl: str | None = None
    input_nc: int | None = None
    output_nc: int | None = None
    nz: int | None = None
    ngf: int | None = None
    nef: int | None = None
    crop_size: int | None = None
    load_size: int | None = None
    direction: str | None = None
    dataroot: str | None = None
    use_dropout: bool = False
    no_flip: bool = False


@dataclass
class Converted:
    run_dir: Path
    config: object  # RunConfig
    notes: list[str]


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMES])
    return shown + (f" and {len(keys) - MAX_NAMES} more" if len(keys) > MAX_NAMES else "")


def read_state_dict(path: Path, role: str) -> dict[str, Tensor]:
    """``torch.load(path, map_location="cpu", weights_only=True)``: a mapping of names to tensors, or a
    :class:`CheckpointError` naming the file."""
    what = f"--{role} {path}"
    if not path.exists():
        raise CheckpointError(f"{what} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} is not a file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the verdict below says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(f"{what} is not a plain state dict: it holds pickled Python objects (it names "
                                  f"{found.group(1)}), which torch.load(weights_only=True) refuses to run") from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines() or [""]
        raise CheckpointError(f"{what} cannot be read as a PyTorch state dict "
                              f"(torch.load(weights_only=True): {detail[0][:200]})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, OSError, ValueError ... on bad files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{what} cannot be read as a PyTorch state dict: {type(exc).__name__}: {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} holds a {type(obj).__name__}, not a state dict (names -> tensors)")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CheckpointError(f"{what} is not a state dict: entries that are not named tensors: {_names(bad)}"
                              + (" (a training checkpoint? give the network's own state dict)" if "state_dict" in bad else ""))
    if not obj:
        raise CheckpointError(f"{what} is an empty state dict")
    nonfinite = sorted(k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if nonfinite:
        raise NonFiniteError(f"{what}: tensor {_names(nonfinite)} holds NaN or inf: these weights cannot make a "
                             f"model (the run had diverged, or the file is damaged)")
    return dict(obj)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_match(what: str, m: L.Match, arch_desc: str) -> None:
    problems = []
    if m.missing:
        problems.append(f"missing tensor{'s' if len(m.missing) > 1 else ''} {_names(m.missing)}")
    if m.unexpected:
        problems.append(f"unexpected tensor{'s' if len(m.unexpected) > 1 else ''} {_names(m.unexpected)}")
    if problems:
        raise ExportError(f"{what} does not match the original's {arch_desc}: " + "; ".join(problems))


def _check_shapes(what: str, sd: dict[str, Tensor], layers: list[L.Layer], arch_desc: str) -> None:
    for layer in layers:
        for t, shape in layer.shapes().items():
            key = f"{layer.orig}.{t}"
            if key in sd and _shape(sd[key]) != shape:
                raise ExportError(f"{what}: tensor {key} has shape {_shape(sd[key])} where the original's {arch_desc} "
                                  f"has {shape}")


def _flag_conflict(flag: str, value: object, what: str, determined: str) -> ConfigError:
    return ConfigError(f"--{flag} {value} contradicts {what}: {determined}")


def _pick(flag: str, given: str | None, options: list[str], what: str, determined: Callable[[list[str]], str]) -> list[str]:
    """The options the tensors leave that agree with ``--flag``; a flag outside them is a ConfigError."""
    if given is None:
        return options
    if given not in options:
        raise _flag_conflict(flag, given, what, determined(options))
    return [given]


def g_desc(arch: L.GArch) -> str:
    net = {v: k for k, v in L.NET_G.items()}.get(arch.depth, f"U-Net with {arch.depth} down-samplings")
    return f"{net} (where_add {arch.where}, upsample {arch.upsample})"


def e_desc(arch: L.EArch) -> str:
    name = {v: k for k, v in L.NET_E.items()}.get((arch.kind, arch.blocks), f"{arch.kind} encoder with {arch.blocks} blocks")
    return name


def infer_g(sd: dict[str, Tensor], what: str, flags: OriginalFlags) -> tuple[list[L.GArch], L.Match]:
    """The G architectures (differing in norm only) that the names allow, with the flags applied."""
    where = L.g_where(sd)
    if where is None:
        hint = ": it looks like an encoder (E); are --G and --E swapped?" if L.looks_like_encoder(sd) else ""
        raise ExportError(f"{what} is not the original's U-Net generator: it has no model.down.* "
                          f"(G_Unet_add_all) or model.model.* (G_Unet_add_input) tensors{hint}")
    fewest, archs = L.best(cands := L.g_candidates(sd, where))
    if fewest:
        _check_match(what, cands[archs[0]], g_desc(archs[0]))  # type: ignore[arg-type]
    archs = [a for a in archs if isinstance(a, L.GArch)]
    first = archs[0]
    if len({(a.depth, a.upsample) for a in archs}) > 1:
        raise ExportError(f"{what}: its tensors fit several U-Nets ({', '.join(g_desc(a) for a in archs)})")
    if flags.where_add is not None and flags.where_add != where:
        raise _flag_conflict("where_add", flags.where_add, what, f"its tensors are G_Unet_add_{where}'s (where_add {where})")
    if flags.netG is not None and L.NET_G[flags.netG] != first.depth:
        raise _flag_conflict("netG", flags.netG, what, f"it has {first.depth} down-samplings ({g_desc(first)}); "
                             f"{flags.netG} has {L.NET_G[flags.netG]}")
    if flags.upsample is not None and flags.upsample != first.upsample:
        kind = "ConvTranspose2d" if first.upsample == "basic" else "Upsample + Conv2d 3x3"
        raise _flag_conflict("upsample", flags.upsample, what, f"its up convs are {kind} (upsample {first.upsample})")
    norms = [a.norm for a in archs]
    _pick("norm", flags.norm, norms, what, lambda opts: f"its tensors are those of norm {' or '.join(opts)}")
    return archs, cands[first]


def infer_e(sd: dict[str, Tensor], what: str, flags: OriginalFlags) -> tuple[list[L.EArch], L.Match]:
    if not L.looks_like_encoder(sd):
        hint = ": it looks like a generator (G); are --G and --E swapped?" if L.looks_like_generator(sd) else ""
        raise ExportError(f"{what} is not the original's encoder: it has no fc.0.* tensors{hint}")
    fewest, archs = L.best(cands := L.e_candidates(sd))
    if fewest:
        _check_match(what, cands[archs[0]], e_desc(archs[0]))  # type: ignore[arg-type]
    archs = [a for a in archs if isinstance(a, L.EArch)]
    first = archs[0]
    if len({(a.kind, a.blocks) for a in archs}) > 1:
        raise ExportError(f"{what}: its tensors fit several encoders ({', '.join(e_desc(a) for a in archs)})")
    if flags.netE is not None and L.NET_E[flags.netE] != (first.kind, first.blocks):
        raise _flag_conflict("netE", flags.netE, what, f"its tensors are those of {e_desc(first)} "
                             f"({first.kind}, {first.blocks} down-samplings)")
    _pick("norm", flags.norm, [a.norm for a in archs], what, lambda opts: f"its tensors are those of norm {' or '.join(opts)}")
    return archs, cands[first]


def _check_flag(flag: str, given: int | None, value: int, what: str, tensor: str, means: str) -> None:
    if given is not None and given != value:
        raise _flag_conflict(flag, given, what, f"its tensor {tensor} gives {flag} {value} ({means})")


def _native_size(blocks: int) -> int:
    return 2 ** (blocks + 3)  # 128 for the original's *_128 encoders (4), 256 for *_256 (5)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty: give a new run dir")


def convert(g_path: Path, e_path: Path | None, out: Path, flags: OriginalFlags,
            echo: Callable[[str], None] = print) -> Converted:
    """Read, check and map the original's G (and E), write ``out`` as a bicycle run dir; returns it and the notes
    it printed through ``echo``."""
    from bicycle import io
    from bicycle.build import build_networks
    from bicycle.config import PRESETS, replace, validate
    from bicycle.nn.encoder import encoder_blocks
    from bicycle.plugins import get_plugins
    from bicycle.outputs import check_new_run_dir, check_writable, new_folder

    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        echo(f"note: {line}")

    _check_out(out)
    check_new_run_dir(out, "--out")
    check_writable(out, "--out")
    if e_path is None and (flags.netE is not None or flags.nef is not None):
        raise ConfigError(f"--{'netE' if flags.netE is not None else 'nef'} describes E, but no --E was given")
    if flags.nl not in (None, "relu"):
        raise ConfigError(f"--nl {flags.nl}: bicycle's U-Net has ReLU on its up path (the original's default, --nl relu); "
                          f"a G built with --nl {flags.nl} cannot be converted")
    g_what = f"--G {g_path}"
    e_what = f"--E {e_path}" if e_path is not None else ""
    g_sd = read_state_dict(g_path, "G")
    e_sd = read_state_dict(e_path, "E") if e_path is not None else None

    g_archs, g_match = infer_g(g_sd, g_what, flags)
    e_archs, e_match = infer_e(e_sd, e_what, flags) if e_sd is not None else ([], None)

    # One norm for both (bicycle's net.norm): what both allow, the original's default first.
    norms = [n for n in L.NORMS if n in {a.norm for a in g_archs} and (not e_archs or n in {a.norm for a in e_archs})
             and flags.norm in (None, n)]
    if not norms:
        raise ExportError(f"{g_what} has norm {g_archs[0].norm} layers but {e_what} has norm {e_archs[0].norm}: "
                          f"bicycle uses one norm for G and E")
    norm = norms[0]
    g_arch = dataclasses.replace(g_archs[0], norm=norm)
    e_arch = dataclasses.replace(e_archs[0], norm=norm) if e_archs else None
    if e_arch is not None and e_arch.kind == "resnet" and norm == "none":
        # Without a norm, each BasicBlock of the original starts with its in-place LeakyReLU, which overwrites the
        # block's input before the shortcut reads it: shortcut(lrelu(x)), not shortcut(x) as in bicycle.
        raise ExportError(f"{e_what}: the original's E_ResNet with norm none feeds its shortcuts the LeakyReLU'd input "
                          f"(an in-place LeakyReLU overwrites it), which bicycle's ResNetEncoder does not: it cannot be "
                          f"converted (its G can, alone: leave out --E)")

    for what, m in ((g_what, g_match), (e_what, e_match)):
        if m is not None and m.tolerated:
            note(f"{what} carries running statistics of its InstanceNorm layers ({len(m.tolerated)} tensors, "
                 f"e.g. {m.tolerated[0]}; saved by PyTorch < 0.4): ignored, as the original's loader drops them")

    # Channels, from the tensors.
    layers0 = L.g_layers(g_arch)
    down0 = next(x for x in layers0 if x.ours == "downs.0.0").orig + ".weight"
    up0 = next(x for x in layers0 if x.ours.startswith("ups.0.")).orig + ".weight"
    ngf, c0 = g_sd[down0].shape[0], g_sd[down0].shape[1]
    out_nc = g_sd[up0].shape[1] if g_arch.upsample == "basic" else g_sd[up0].shape[0]
    _check_flag("ngf", flags.ngf, ngf, g_what, down0, "its first conv's output channels")
    _check_flag("output_nc", flags.output_nc, out_nc, g_what, up0, "its last up conv's output channels")
    e_nz = None
    if e_sd is not None and e_arch is not None:
        nef, e_in, e_nz = e_sd["conv.0.weight"].shape[0], e_sd["conv.0.weight"].shape[1], e_sd["fc.0.weight"].shape[0]
        _check_flag("nef", flags.nef, nef, e_what, "conv.0.weight", "its first conv's output channels")
        _check_flag("nz", flags.nz, e_nz, e_what, "fc.0.weight", "the size of mu")
        if e_in != out_nc:
            raise ExportError(f"{e_what} encodes {e_in}-channel images (conv.0.weight) but {g_what} makes {out_nc}-channel "
                              f"ones ({up0}): not the same model's G and E")
    if g_arch.where == "all":
        down1 = next(x for x in layers0 if x.ours == "downs.1.1").orig + ".weight"
        nz = g_sd[down1].shape[1] - ngf
        in_nc = c0 - nz
        _check_flag("nz", flags.nz, nz, g_what, down1, f"its second conv takes ngf {ngf} + nz channels")
        if e_nz is not None and e_nz != nz:
            raise ExportError(f"{e_what} gives nz {e_nz} (fc.0.weight) but {g_what} takes nz {nz} ({down1}): "
                              f"not the same model's G and E")
        _check_flag("input_nc", flags.input_nc, in_nc, g_what, down0, f"its first conv takes input_nc + nz {nz} channels")
    else:  # z enters the first conv only: input_nc + nz = c0
        if e_nz is not None:
            nz = e_nz
        elif flags.nz is not None:
            nz = flags.nz
        elif flags.input_nc is not None:
            nz = c0 - flags.input_nc
        else:
            nz = DEFAULT_NZ
            note(f"{g_what} adds z at its input only, so its first conv ({c0} channels = input_nc + nz) does not tell "
                 f"nz from input_nc: nz {nz} assumed (the original's default; give --nz or --input_nc otherwise)")
        in_nc = c0 - nz
        if flags.input_nc is not None and flags.input_nc != in_nc:
            raise _flag_conflict("input_nc", flags.input_nc, g_what,
                                 f"its tensor {down0} takes {c0} channels = input_nc + nz, and nz is {nz}")
        if in_nc < 1:
            raise ConfigError(f"{g_what}: its first conv ({down0}) takes {c0} channels = input_nc + nz, which leaves "
                              f"input_nc {in_nc} with nz {nz}: give --nz or --input_nc")
    if nz < 1:
        raise ExportError(f"{g_what} takes no z (nz 0: the original's pix2pix model): bicycle's generators always take z")

    g_layers = L.g_layers(g_arch, in_nc, out_nc, nz, ngf)
    _check_shapes(g_what, g_sd, g_layers, f"{g_desc(g_arch)} with input_nc {in_nc}, output_nc {out_nc}, nz {nz}, ngf {ngf}")
    e_layers: list[L.Layer] = []
    if e_sd is not None and e_arch is not None:
        e_layers = L.e_layers(e_arch, out_nc, nz, nef)
        _check_shapes(e_what, e_sd, e_layers, f"{e_desc(e_arch)} with nef {nef}, nz {nz}")

    # Image size: --crop_size, else what E (its global pool sees 8x8 at its own size) or G's depth implies.
    depth = g_arch.depth
    if depth not in L.BACKBONES:
        raise ExportError(f"{g_what} has {depth} down-samplings; bicycle converts the original's unet_128 (7) and unet_256 (8)")
    if flags.crop_size is not None:
        size = flags.crop_size
    elif e_arch is not None:
        size = _native_size(e_arch.blocks)
    else:
        size = 2**depth
    if e_arch is not None and encoder_blocks(size) != e_arch.blocks and flags.crop_size is None:
        raise ExportError(f"{e_what} ({e_desc(e_arch)}) has {e_arch.blocks} down-samplings; bicycle's encoders have "
                          f"2 to 5 (32 to 256 px and up)")
    if e_arch is not None and encoder_blocks(size) != e_arch.blocks:
        raise _flag_conflict("crop_size", size, e_what, f"its tensors are {e_desc(e_arch)}'s ({e_arch.blocks} "
                             f"down-samplings, made for {_native_size(e_arch.blocks)} px) and bicycle's encoder at "
                             f"{size} px has {encoder_blocks(size)}")
    if flags.load_size is not None and flags.load_size < size:
        raise ConfigError(f"--load_size {flags.load_size} is below the image size {size} (--crop_size)")

    data = NO_DATA
    if flags.dataroot is not None:
        root = Path(flags.dataroot)
        if not root.is_dir():
            raise ConfigError(f"--dataroot {root} is not a folder")
        data = str(root.resolve())
    model = "bicycle" if e_sd is not None else "pix2pix"
    overrides = {
        "net.backbone": L.BACKBONES[depth], "net.inject": g_arch.where, "net.image_size": size,
        "net.in_channels": in_nc, "net.out_channels": out_nc, "net.nz": nz, "net.ngf": ngf, "net.norm": norm,
        "net.upsample": g_arch.upsample, "net.dropout": flags.use_dropout, "train.model": model,
        "data.data": data, "data.direction": flags.direction, "data.load_size": flags.load_size,
        "data.flip": not flags.no_flip,
    }
    if e_arch is not None:
        overrides |= {"net.encoder": e_arch.kind, "net.nef": nef}
    cfg = validate(replace(PRESETS["paper"], overrides))
    registry = get_plugins().registry
    problem = registry.backbone(cfg.net.backbone).check_size(size)
    if problem:
        raise ConfigError(f"--crop_size {size}: {problem}")
    nets = build_networks(cfg, registry, inference=True)

    _load(nets.G, "G", g_what, g_sd, g_layers, g_desc(g_arch))
    if nets.E is not None:
        _load(nets.E, "E", e_what, e_sd or {}, e_layers, e_desc(e_arch) if e_arch else "")  # type: ignore[arg-type]
    if e_sd is None:
        note("no --E: writing a pix2pix run (G(A, z) with z ~ N(0, I), no encoder)")

    sources = ", ".join(p.name for p in (g_path, e_path) if p is not None)
    ckpts = out / "checkpoints"
    with new_folder(out):  # a failed write leaves no half-made run dir to block the retry
        with io.writing(out):
            out.mkdir(parents=True, exist_ok=True)
            ckpts.mkdir(exist_ok=True)
        with io.writing(out / "config.json"):
            io.atomic_write_bytes(out / "config.json", (cfg.to_json() + "\n").encode())
        with io.writing(ckpts / CHECKPOINT):
            io.save_weights(ckpts / CHECKPOINT, cfg, nets, step=0, source=f"original BicycleGAN: {sources}")
        with io.writing(ckpts / io.LATEST):
            io.write_latest(ckpts, CHECKPOINT)
    return Converted(out, cfg, notes)


def _load(net: torch.nn.Module, name: str, what: str, sd: dict[str, Tensor], layers: list[L.Layer], desc: str) -> None:
    """Copy the original's tensors into bicycle's ``net`` by name; shapes must agree with what bicycle built."""
    ours = net.state_dict()
    mapped: dict[str, Tensor] = {}
    for layer in layers:
        for t in layer.shapes():
            src, dst = f"{layer.orig}.{t}", f"{layer.ours}.{t}"
            if src in sd:
                mapped[dst] = sd[src]
            elif t == "num_batches_tracked":  # BatchNorm of PyTorch < 0.4: the original's loader starts it at 0
                mapped[dst] = torch.zeros((), dtype=torch.long)
    if set(mapped) != set(ours):
        extra, absent = sorted(set(mapped) - set(ours)), sorted(set(ours) - set(mapped))
        raise ExportError(f"{what}: bicycle's {name} and the original's {desc} do not have the same tensors "
                          f"(only the original: {_names(extra) or 'none'}; only bicycle: {_names(absent) or 'none'})")
    for layer in layers:
        for t in layer.shapes():
            dst = f"{layer.ours}.{t}"
            if _shape(mapped[dst]) != _shape(ours[dst]):
                raise ExportError(f"{what}: tensor {layer.orig}.{t} has shape {_shape(mapped[dst])} but bicycle's {name} "
                                  f"({type(net).__name__}) has {_shape(ours[dst])} at {dst}")
    net.load_state_dict({k: v.to(ours[k].dtype) for k, v in mapped.items()}, strict=True)
