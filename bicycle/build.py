"""From a RunConfig (+ the plugin registry) to datasets, networks and a device: what training and
inference share. Training's own state (optimizers, schedules) lives in :mod:`bicycle.train`."""
from __future__ import annotations

import dataclasses
import os

import torch

from bicycle.config import RunConfig, validate
from bicycle.data.base import DatasetRequest
from bicycle.errors import ConfigError, DataError
from bicycle.models import MODELS
from bicycle.nets import Nets
from bicycle.nn.discriminator import MultiScaleDiscriminator
from bicycle.nn.encoder import ENCODERS
from bicycle.registry import DatasetSpec, GeneratorArgs, Registry

def dataset_name(cfg: RunConfig) -> tuple[str, str | None]:
    """(dataset plugin name, path or None). An existing path wins over a dataset name."""
    data = cfg.data.data
    if os.path.exists(data):
        return "aligned", data
    if os.sep in data or data.startswith("."):
        raise ConfigError(f"data folder {data!r} does not exist")
    return data, None


def dataset_request(cfg: RunConfig, split: str) -> DatasetRequest:
    _, path = dataset_name(cfg)
    train = split == "train"
    return DatasetRequest(split=split, image_size=cfg.net.image_size, path=path, direction=cfg.data.direction,  # type: ignore[arg-type]
                          flip=cfg.data.flip and train, load_size=cfg.data.load_size, seed=cfg.train.seed,
                          options=(("modes", cfg.data.modes), ("impl", cfg.train.impl)))


def dataset_spec(cfg: RunConfig, registry: Registry) -> DatasetSpec:
    name, path = dataset_name(cfg)
    spec = registry.dataset(name)
    if spec.needs_path and path is None:
        raise ConfigError(f"dataset {name!r} reads a folder: pass --data PATH")
    return spec


def build_dataset(cfg: RunConfig, registry: Registry, split: str):
    return dataset_spec(cfg, registry).build(dataset_request(cfg, split))


def build_eval_dataset(cfg: RunConfig, registry: Registry):
    """The val split, or the train split for datasets without one (e.g. a folder of images only)."""
    try:
        return build_dataset(cfg, registry, "val")
    except DataError:
        return build_dataset(cfg, registry, "train")


def resolve(cfg: RunConfig, registry: Registry, dataset: object | None = None) -> RunConfig:
    """Validate against the registry: known backbone/injector, supported size, dataset channels, and that
    the device and the fused-op impl asked for can run here (before anything slow)."""
    from bicycle.ops import check_impl

    validate(cfg)
    backbone = registry.backbone(cfg.net.backbone)
    registry.injector(cfg.net.inject)
    dataset_spec(cfg, registry)
    problem = backbone.check_size(cfg.net.image_size)
    if problem:
        raise ConfigError(problem)
    check_impl(cfg.train.impl, pick_device(cfg.train.device).type)
    if dataset is not None:
        net = dataclasses.replace(cfg.net, in_channels=dataset.a_channels, out_channels=dataset.b_channels)  # type: ignore[attr-defined]
        cfg = dataclasses.replace(cfg, net=net)
    return cfg


def build_networks(cfg: RunConfig, registry: Registry) -> Nets:
    """G, E (if the model uses one), D and D2 (bicycle only), on the CPU, initialised."""
    n, model = cfg.net, MODELS[cfg.train.model]
    g_args = GeneratorArgs(n.in_channels, n.out_channels, n.nz, n.image_size, n.ngf, n.norm, n.upsample, n.dropout)
    G = registry.backbone(n.backbone).build(g_args, registry.injector(n.inject))

    def disc() -> MultiScaleDiscriminator:
        return MultiScaleDiscriminator(n.out_channels, n.image_size, n.ndf, n.d_layers, n.d_scales, n.norm)

    E = ENCODERS[n.encoder](n.out_channels, n.nz, n.image_size, n.nef, n.norm) if model.uses_encoder else None
    D = disc()
    D2 = disc() if "D2" in model.discriminators else None
    return Nets(G=G, D=D, E=E, D2=D2)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available here")
    return dev
