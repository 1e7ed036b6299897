"""From a RunConfig (+ the plugin registry) to datasets and networks: what training and
inference share. Training's own state (optimizers, schedules) lives in :mod:`bicycle.train`."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from bicycle.config import RunConfig, validate
from bicycle.data.base import DatasetRequest
from bicycle.errors import BicycleError, ConfigError, DataError, MissingSplitError, PluginError
from bicycle.models import MODELS
from bicycle.nets import Nets
from bicycle.nn.augment import parse_policy
from bicycle.nn.discriminator import MultiScaleDiscriminator
from bicycle.nn.encoder import ENCODERS
from bicycle.registry import DatasetSpec, GeneratorArgs, Registry

def dataset_name(cfg: RunConfig) -> tuple[str, str | None]:
    """(dataset plugin name, path or None). An existing path wins over a dataset name; ``NAME:ARG`` names
    the dataset NAME with the argument ARG (e.g. ``procedural:7``: task 7)."""
    data = cfg.data.data
    if os.path.exists(data):
        return "aligned", data
    if os.sep in data or data.startswith("."):
        raise ConfigError(f"data folder {data!r} does not exist")
    named = _NAME_ARG.fullmatch(data)
    return (named.group(1) if named else data), None


_NAME_ARG = re.compile(r"([A-Za-z0-9_.-]+):(\S+)")


def dataset_argument(cfg: RunConfig) -> str | None:
    """ARG of ``--data NAME:ARG`` (None without one, or for a folder)."""
    data = cfg.data.data
    named = None if os.path.exists(data) else _NAME_ARG.fullmatch(data)
    return named.group(2) if named else None


def dataset_request(cfg: RunConfig, split: str, channels: tuple[int, int] | None = None) -> DatasetRequest:
    """``channels``: (A, B) channels a trained model reads (file datasets convert to them; see ``aligned``)."""
    _, path = dataset_name(cfg)
    train = split == "train"
    extra = (("channels", channels),) if channels is not None else ()
    if (arg := dataset_argument(cfg)) is not None:
        extra += (("task", arg),)
    return DatasetRequest(split=split, image_size=cfg.net.image_size, path=path, direction=cfg.data.direction,  # type: ignore[arg-type]
                          flip=cfg.data.flip and train, load_size=cfg.data.load_size, seed=cfg.train.seed,
                          options=(("modes", cfg.data.modes), ("impl", cfg.train.impl),
                                   ("bad_images", cfg.data.bad_images)) + extra)


def dataset_spec(cfg: RunConfig, registry: Registry) -> DatasetSpec:
    name, path = dataset_name(cfg)
    spec = registry.dataset(name)
    if spec.needs_path and path is None:
        raise ConfigError(f"dataset {name!r} reads a folder: pass --data PATH")
    return spec


BUILTIN_DATASETS = "bicycle.builtin.datasets"  # the plugin of the built-in datasets


def check_direction(cfg: RunConfig, registry: Registry) -> None:
    """``data.direction`` BtoA swaps the halves of a folder's images; the built-in generated datasets make
    A->B pairs only, so it is refused there rather than recorded and ignored."""
    name, path = dataset_name(cfg)
    if cfg.data.direction != "AtoB" and path is None and registry.plugin_of("dataset", name) == BUILTIN_DATASETS:
        raise ConfigError(f"--direction {cfg.data.direction} swaps the halves of a folder dataset's images; the "
                          f"built-in dataset {name!r} is generated A->B only (leave --direction out, or give --data PATH)")


def build_dataset(cfg: RunConfig, registry: Registry, split: str, channels: tuple[int, int] | None = None):
    name, _ = dataset_name(cfg)
    spec = dataset_spec(cfg, registry)
    with plugin_code(registry.plugin_of("dataset", name), f"dataset {name!r}"):
        return spec.build(dataset_request(cfg, split, channels))


def _note(line: str) -> None:
    print(line, file=sys.stderr)


def build_eval_dataset(cfg: RunConfig, registry: Registry, purpose: str = "the evaluation", *,
                       echo: Callable[[str], None] = _note, train: object | None = None, model_channels: bool = False):
    """The val split; for a dataset without one (:class:`MissingSplitError`: a folder with ``train/`` only),
    the train split (``train`` when already built), said in one line through ``echo`` naming ``purpose``.
    Any other problem with the val split (a bad file in ``val/``) is raised, never papered over.
    ``model_channels``: a trained model's inputs: files are converted to ``cfg.net``'s channels."""
    channels = (cfg.net.in_channels, cfg.net.out_channels) if model_channels else None
    try:
        return build_dataset(cfg, registry, "val", channels)
    except MissingSplitError as e:
        echo(f"note: {e.root or cfg.data.data} has no val/ folder: using train/ for {purpose}")
    return train if train is not None else build_dataset(cfg, registry, "train", channels)


@dataclass(frozen=True)
class RunData:
    """A training run's config resolved against its data (channels filled in) and its two splits."""

    cfg: RunConfig
    train: object
    val: object


def prepare_run(cfg: RunConfig, registry: Registry, echo: Callable[[str], None] = _note) -> RunData:
    """The train split, the val split (or the train split, said through ``echo``), and ``cfg`` resolved."""
    dataset = build_dataset(cfg, registry, "train")
    val = build_eval_dataset(cfg, registry, "the sample grids", echo=echo, train=dataset)
    return RunData(resolve(cfg, registry, dataset), dataset, val)


def resolve(cfg: RunConfig, registry: Registry, dataset: object | None = None) -> RunConfig:
    """Validate against the registry: known backbone/injector, supported size, dataset channels, and that
    the device and the fused-op impl asked for can run here (before anything slow)."""
    from bicycle.ops import check_cuda_graphs, check_impl, pick_device

    dataset_spec(cfg, registry)
    check_direction(cfg, registry)
    validate(cfg)
    backbone = registry.backbone(cfg.net.backbone)
    injector = registry.injector(cfg.net.inject)
    if injector.decoder and not backbone.decoder_points:
        offered = [n for n in registry.names("backbone") if registry.backbone(n).decoder_points]
        raise ConfigError(f"injector {injector.name!r} needs a backbone with decoder injection points; backbone "
                          f"{backbone.name!r} offers none (use --inject all, or a backbone among "
                          f"{', '.join(offered) or 'none'})")
    try:
        parse_policy(cfg.net.diffaug)
    except ValueError as exc:
        raise ConfigError(f"--diffaug: {exc}") from None
    problem = backbone.check_size(cfg.net.image_size)
    if problem:
        raise ConfigError(problem)
    device = pick_device(cfg.train.device)
    check_cuda_graphs(cfg.train.cuda_graphs, device)
    check_impl(cfg.train.impl, device.type)
    if dataset is not None:
        net = dataclasses.replace(cfg.net, in_channels=dataset.a_channels, out_channels=dataset.b_channels)  # type: ignore[attr-defined]
        cfg = dataclasses.replace(cfg, net=net)
    return cfg


def build_networks(cfg: RunConfig, registry: Registry, *, inference: bool = False) -> Nets:
    """G, E (if the model uses one), D and D2 (bicycle only), on the CPU, initialised.
    ``inference``: G and E only (what translating needs)."""
    n, model = cfg.net, MODELS[cfg.train.model]
    g_args = GeneratorArgs(n.in_channels, n.out_channels, n.nz, n.image_size, n.ngf, n.norm, n.upsample, n.dropout,
                           n.refine)
    with plugin_code(registry.plugin_of("backbone", n.backbone), f"backbone {n.backbone!r}"):
        G = registry.backbone(n.backbone).build(g_args, registry.injector(n.inject))
    if not isinstance(G, torch.nn.Module):
        raise PluginError(f"plugin {registry.plugin_of('backbone', n.backbone)!r}: backbone {n.backbone!r} built a "
                          f"{type(G).__name__}, not a torch.nn.Module")

    def own_norm(kind: str) -> str:
        return n.norm if kind == "same" else kind

    def disc() -> MultiScaleDiscriminator:
        channels = n.out_channels + (n.in_channels if n.conditional_d else 0)
        return MultiScaleDiscriminator(channels, n.image_size, n.ndf, n.d_layers, n.d_scales, own_norm(n.d_norm),
                                       parse_policy(n.diffaug), n.spectral_norm)

    E = (ENCODERS[n.encoder](n.out_channels, n.nz, n.image_size, n.nef, own_norm(n.e_norm)) if model.uses_encoder
         else None)
    if inference:
        return Nets(G=G, E=E)
    D = disc()
    D2 = disc() if "D2" in model.discriminators else None
    return Nets(G=G, D=D, E=E, D2=D2)


def check_channels(dataset, cfg: RunConfig) -> None:
    """A dataset given to a trained model (``sample --data``, ``eval --data``) has the channels it was trained on."""
    got = (dataset.a_channels, dataset.b_channels)
    want = (cfg.net.in_channels, cfg.net.out_channels)
    if got != want:
        raise DataError(f"dataset {cfg.data.data!r} has {got[0]}->{got[1]} channels; the model was trained on "
                        f"{want[0]}->{want[1]}")


@contextlib.contextmanager
def plugin_code(plugin: str, what: str) -> Iterator[None]:
    """Code a plugin supplied (a component's ``build``): bicycle's own errors pass, anything else it raises
    (or a ``sys.exit``) becomes a PluginError naming the plugin."""
    try:
        yield
    except BicycleError:
        raise
    except (Exception, SystemExit) as exc:
        why = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise PluginError(f"plugin {plugin!r}: building {what} failed: {why}") from exc
