"""Typed configuration: frozen dataclasses, presets and one validation pass.

The CLI is a thin layer that turns flags into :func:`resolve` arguments and :class:`ConfigError`
into a usage error. The resolved :class:`RunConfig` is stored in the run dir and inside every
checkpoint, so weights can be rebuilt without repeating flags.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bicycle.arguments import MAX_SEED, check_seed
from bicycle.errors import ConfigError

MODELS = ("bicycle", "pix2pix", "cae-gan", "cvae-gan", "clr-gan")
NORMS = ("instance", "batch", "none")
SUB_NORMS = ("same",) + NORMS  # "same": as net.norm
UPSAMPLES = ("basic", "bilinear", "nearest")
ENCODERS = ("resnet", "conv")
GAN_MODES = ("lsgan", "vanilla")
DIRECTIONS = ("AtoB", "BtoA")
PRECISIONS = ("fp32", "bf16")
BAD_IMAGES = ("error", "skip")
IMPLS = ("auto", "triton", "cpp", "ref")
WEIGHTS = ("auto", "ema", "raw")  # which weights translate: the moving averages when kept (auto), or as trained
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096  # 8x the largest size the original ran (512 px); larger cannot fit a U-Net step in memory
MAX_STEPS = 10**9  # ~30 years at 1 s/step: more is a typo


def key(default: Any, help: str | None = None, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
        derived: bool = False, resumable: bool = False) -> Any:
    """A config field declared once: its default, and what its ``bicycle train`` flag shows (``help``, ``choices``);
    ``flag``: the flag's name where it differs from the field's (``lambda_l1`` for ``loss.l1``); ``derived``: filled
    in by bicycle (no flag, not settable); ``resumable``: a resumed run may change it (:data:`RESUMABLE_KEYS`)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "derived": derived,
                                            "resumable": resumable})


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of G, E, D and D2 (paper defaults). Channels are filled in from the dataset."""

    backbone: str = key("unet256", "generator backbone, e.g. unet, unet128, unet256")
    inject: str = key("all", "z-injection strategy: input, all, all-film (z also in the decoder), or a plugin's "
                             "(bicycle plugins)")
    encoder: str = key("resnet", choices=ENCODERS)
    image_size: int = key(256, "square image size in px (>= 32)")
    in_channels: int = key(3, derived=True)
    out_channels: int = key(3, derived=True)
    nz: int = key(8, "latent code size (8)")
    ngf: int = key(64)
    nef: int = key(64)
    ndf: int = key(64)
    norm: str = key("instance", choices=NORMS)
    upsample: str = key("basic", choices=UPSAMPLES)
    refine: int = key(0, "channels of a full-resolution conv block before G's output, so that an edge can fall "
                         "inside a 2x2 block of a resize-convolution (0: none, as the paper)")
    dropout: bool = key(True)
    d_layers: int = key(3, "stride-2 layers of each PatchGAN scale (3; the original's 128-px D has 2)")
    d_scales: int = key(2, "scales of each multi-scale discriminator (2)")
    d_norm: str = key("same", "normalization inside D and D2: same (as --norm, as the paper), instance, batch or none",
                      choices=SUB_NORMS)
    e_norm: str = key("same", "normalization inside E: same (as --norm, as the paper), instance, batch or none",
                      choices=SUB_NORMS)
    gan_mode: str = key("lsgan", choices=GAN_MODES)
    conditional_d: bool = key(False, "D and D2 judge A beside B, so the random-z branch is told whether its output "
                                     "fits the input (the original's --conditional_D; off, as the paper)")
    spectral_norm: bool = key(False, "spectral normalization of D's and D2's convolutions (off, as the paper)")
    diffaug: str = key("", "differentiable augmentation of D's inputs, real and fake alike (DiffAugment): a "
                           "comma-separated list of color, translation, cutout (empty: off, as the paper)")


@dataclass(frozen=True)
class LossWeights:
    """lambda_* of the paper. ``kl_warmup``: lambda_KL ramps linearly from kl/W to kl over the first
    W = ``kl_warmup * train.steps`` steps (KL annealing, Bowman et al., 2016); 0 keeps it constant, as the paper.
    ``kl_free_bits``: "free bits" (Kingma et al., 2016): each dimension's batch-mean KL is floored at this many nats
    before the sum over dimensions (and the batch) is restored; 0: off, as the paper. ``mode_seeking``: MSGAN (Mao et
    al., 2019): lambda_ms / (|G(A, z_rand) - G(A, z_enc)|_1 / |z_rand - z_enc|_1 + 1e-5), on the random branch only
    (the encoded output and code detached); bicycle model only; 0: off, as the paper."""

    l1: float = key(10.0, flag="lambda_l1")
    kl: float = key(0.01, flag="lambda_kl")
    z: float = key(0.5, flag="lambda_z")
    gan: float = key(1.0, "weight of the encoded branch's GAN loss (D; 1)", flag="lambda_gan")
    gan2: float = key(1.0, "weight of the random-z branch's GAN loss (D2; 1)", flag="lambda_gan2")
    kl_warmup: float = key(0.0, "ramp lambda_KL up linearly over this fraction of the steps (0: constant, as the "
                                "paper)")
    kl_free_bits: float = key(0.0, "floor, in nats, on each dimension's batch-mean KL (free bits; 0: off)")
    mode_seeking: float = key(0.0, "mode seeking (MSGAN): push G(A, z_rand) away from G(A, z_enc) (0: off, as the "
                                   "paper)", flag="lambda_ms")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for each of G, E, D, D2; constant LR, then linear decay to 0 from ``decay_start`` (a
    fraction of the steps) to the end. ``lr_d``: the discriminators' LR (None: ``lr``, as the paper;
    a larger one is the two time-scale update rule of Heusel et al., 2017)."""

    lr: float = key(2e-4)
    lr_d: float | None = key(None, "learning rate of D and D2 (default: --lr)")
    beta1: float = key(0.5, "Adam's beta1 for every network (0.5)")
    beta2: float = key(0.999, "Adam's beta2 for every network (0.999)")
    decay_start: float = key(0.5, "fraction of the steps after which the LR decays linearly to 0 (0.5)")


@dataclass(frozen=True)
class DataConfig:
    """``data``: a dataset name (see ``bicycle plugins``) or a folder path (an existing path wins).
    ``bad_images`` is not resumable: it changes which files are trained on."""

    data: str = key("shapes", "dataset name (see `bicycle plugins`) or a folder (pix2pix layout); an existing path "
                              "wins")
    direction: str = key("AtoB", choices=DIRECTIONS)
    load_size: int | None = key(None, "resize to this before random crops (folders)")
    flip: bool = key(True, "random horizontal flips (folders)")
    modes: int = key(8, "modes of B per A of the built-in shapes datasets (8)")
    bad_images: str = key("error", "files the start-up check cannot decode: error (default) names them and stops; "
                                   "skip trains without them, listed in RUN/bad_images.txt", choices=BAD_IMAGES)


@dataclass(frozen=True)
class TrainConfig:
    """``cuda_graphs``: execution only (the mathematics is the same): None = CUDA graphs on CUDA devices, eager
    elsewhere. ``precision``: "bf16" is autocast + channels_last (opt-in). ``compile``: torch.compile each network.
    ``ema``: the decay of a moving average of G's and E's weights (:mod:`bicycle.train.ema`); 0: off."""

    model: str = key("bicycle", choices=MODELS)
    steps: int = key(200_000, "training iterations", resumable=True)
    batch_size: int = key(2)
    seed: int = key(0)
    device: str = key("auto", "auto, cpu, cuda, cuda:1 ...", resumable=True)
    impl: str = key("auto", "fused-op implementation", choices=IMPLS, resumable=True)
    log_every: int = key(50, resumable=True)
    sample_every: int = key(1000, resumable=True)
    checkpoint_every: int = key(1000, resumable=True)
    keep_checkpoints: int = key(3, "how many of the newest checkpoints a run keeps (3)", resumable=True)
    cuda_graphs: bool | None = key(None, "replay each iteration from a CUDA graph (default: on for CUDA devices, "
                                         "eager on CPU)", resumable=True)
    precision: str = key("fp32", "bf16: autocast + channels_last (opt-in)", choices=PRECISIONS, resumable=True)
    compile: bool = key(False, "torch.compile the networks", resumable=True)
    ema: float = key(0.0, "keep an exponential moving average of G's and E's weights with this decay (e.g. 0.999), "
                          "used by sampling, eval, export and the progress grids (0: off, as the paper)")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    net: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RunConfig:
        """Strict: an unknown or missing section/key is a ConfigError naming it."""
        sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {"preset": d.get("preset", "custom")}
        for name, cls in _SECTION_TYPES.items():
            values = d.get(name, {})
            known = {f.name for f in dataclasses.fields(cls)}
            bad = set(values) - known
            if bad:
                raise ConfigError(f"unknown key(s) in config section {name!r}: {', '.join(sorted(bad))}")
            kwargs[name] = cls(**values)
        return RunConfig(**kwargs)

    def get(self, name: str) -> Any:
        """The value of ``"net.nz"``-style key ``name``."""
        section, _, key = name.partition(".")
        return getattr(getattr(self, section), key)

    def flat(self) -> dict[str, Any]:
        """{"net.nz": 8, ...}: for comparisons and error messages."""
        out: dict[str, Any] = {"preset": self.preset}
        for name in _SECTION_TYPES:
            for k, v in dataclasses.asdict(getattr(self, name)).items():
                out[f"{name}.{k}"] = v
        return out


_SECTION_TYPES = {
    "net": NetworkConfig,
    "loss": LossWeights,
    "optim": OptimConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


PRESETS: dict[str, RunConfig] = {
    "demo": RunConfig(
        preset="demo",
        net=NetworkConfig(backbone="unet", inject="all", image_size=32, ngf=32, nef=32, ndf=32, dropout=False),
        loss=LossWeights(kl=0.025, kl_warmup=0.3),
        optim=OptimConfig(lr=1e-3),
        data=DataConfig(data="shapes"),
        train=TrainConfig(steps=5000, batch_size=8, log_every=25, sample_every=500, checkpoint_every=500),
    ),
    "paper": RunConfig(
        preset="paper",
        net=NetworkConfig(backbone="unet256", inject="all", image_size=256),
        train=TrainConfig(steps=200_000, batch_size=2),
    ),
}


@dataclass(frozen=True)
class SizeBand:
    """The values a preset takes for image sizes from ``low`` to ``high`` px (None: no bound), each unless the
    user sets that key. ``steps_at_128``: the run's length follows the image size (:func:`band_steps`) when
    ``train.steps`` is not given. A ``net.inject`` value applies only to backbones with decoder injection points.
    Why each value: docs/presets.md."""

    name: str
    summary: str
    low: int | None = None
    high: int | None = None
    values: tuple[tuple[str, Any], ...] = ()
    steps_at_128: int | None = None

    def holds(self, image_size: int) -> bool:
        return (self.low is None or image_size >= self.low) and (self.high is None or image_size <= self.high)


_DEMO_LARGER = (("train.batch_size", 2), ("loss.kl", 0.01), ("net.ngf", 16), ("net.nef", 16), ("net.ndf", 16),
                ("net.inject", "all-film"), ("net.upsample", "nearest"))

SIZE_BANDS: dict[str, tuple[SizeBand, ...]] = {
    "demo": (
        SizeBand("32 px", "32 px shapes, widths 32, batch 8, lr 1e-3, lambda_KL 0.025 ramped", high=32),
        SizeBand("33-128 px", "widths 16, batch 2, lambda_KL 0.01, nearest resize-convolutions, a 2-layer D, "
                              "lr 2e-3, length by image size",
                 low=33, high=128, values=_DEMO_LARGER + (("net.d_layers", 2), ("optim.lr", 2e-3)), steps_at_128=4500),
        SizeBand("over 128 px", "widths 16, batch 2, lambda_KL 0.01, nearest resize-convolutions, lr 1e-3, "
                                "length by image size",
                 low=129, values=_DEMO_LARGER, steps_at_128=4500),
    ),
    "paper": (
        SizeBand("128 px", "the original's 128-px recipe: unet128, a 2-layer multi-scale D", low=128, high=128,
                 values=(("net.backbone", "unet128"), ("net.d_layers", 2))),
        SizeBand("other sizes", "the paper's configuration: unet256, z at all layers, batch 2, lr 2e-4"),
    ),
}


def size_band(preset: str, image_size: int) -> SizeBand:
    """The band of ``preset`` that holds ``image_size`` (the first that does)."""
    return next(b for b in SIZE_BANDS[preset] if b.holds(image_size))


def band_steps(band: SizeBand, image_size: int) -> int | None:
    """A band's length at ``image_size`` px: ``steps_at_128`` at 128 px and 4x fewer per 2x the size (a step's cost
    grows with the pixel count), rounded to 10, within [10, 5000]; None when the band keeps the preset's length."""
    if band.steps_at_128 is None:
        return None
    return max(10, min(5000, int(round(band.steps_at_128 * (128 / image_size) ** 2 / 10)) * 10))


def demo_steps(image_size: int) -> int:
    """The demo preset's length at ``image_size`` px."""
    return band_steps(size_band("demo", image_size), image_size) or PRESETS["demo"].train.steps


def preset_config(name: str, overrides: dict[str, Any], *, decoder_points: bool = True) -> RunConfig:
    """A preset with ``overrides`` and, for every key the overrides leave out, the values of the size band that
    holds the image size (:data:`SIZE_BANDS`). ``decoder_points``: whether the run's backbone offers decoder
    injection points; without them a band's ``net.inject`` is not taken."""
    return resolve_preset(name, overrides, decoder_points=decoder_points)[0]


def resolve_preset(name: str, overrides: dict[str, Any], *,
                   decoder_points: bool = True) -> tuple[RunConfig, SizeBand]:
    """:func:`preset_config` and the size band that applied."""
    cfg = replace(PRESETS[name], overrides)
    band = size_band(name, cfg.net.image_size)
    extra = {k: v for k, v in band.values if decoder_points or k != "net.inject"}
    steps = band_steps(band, cfg.net.image_size)
    if steps is not None and overrides.get("train.steps") is None:
        extra.update({"train.steps": steps, "train.sample_every": max(1, steps // 10),
                      "train.checkpoint_every": max(1, steps // 10)})
    return replace(cfg, {k: v for k, v in extra.items() if overrides.get(k) is None}), band


def replace(cfg: RunConfig, overrides: dict[str, Any], *, keep_none: bool = False) -> RunConfig:
    """Apply {"net.nz": 16, ...}; None values are ignored (``keep_none``: set). Unknown keys are a ConfigError."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None and not keep_none:
            continue
        section, _, name = key.partition(".")
        if section not in _SECTION_TYPES or name not in {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}:
            raise ConfigError(f"unknown config key {key!r}")
        sections.setdefault(section, {})[name] = value
    kwargs = {s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()}
    return dataclasses.replace(cfg, **kwargs)


def config_fields() -> Iterator[tuple[str, dataclasses.Field]]:
    """("net.backbone", its field), ... for every key of a :class:`RunConfig`, in declaration order."""
    for section, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f


# Keys a resumed run may change; any other difference is a usage error.
RESUMABLE_KEYS = frozenset(name for name, f in config_fields() if f.metadata["resumable"])

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_value(name: str, text: str) -> Any:
    """``text`` as the value of config key ``name``, by the field's type: ``none`` for an optional key,
    ``true``/``false`` for a switch; an unknown or derived key, or a value of the wrong type, is a ConfigError."""
    fields = dict(config_fields())
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"--set {name}={text}: unknown config key {name!r}{hint}; keys: bicycle train --dry-run")
    f = fields[name]
    if f.metadata["derived"]:
        raise ConfigError(f"--set {name}: bicycle fills this key in itself (from the dataset)")
    kinds = [k.strip() for k in str(f.type).split("|")]
    word = text.strip().lower()
    if "None" in kinds and word == "none":
        return None
    kind = kinds[0]
    if kind == "bool":
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ConfigError(f"--set {name}={text}: {name} takes true or false")
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise ConfigError(f"--set {name}={text}: {name} takes {'an integer' if kind == 'int' else 'a number'}"
                              + (" or none" if "None" in kinds else "")) from None
    return text


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def validate(cfg: RunConfig) -> RunConfig:
    """One validation pass over everything that does not need the plugin registry."""
    n, t, o, d = cfg.net, cfg.train, cfg.optim, cfg.data
    for name, f in config_fields():
        if f.metadata["choices"] is not None:
            _choice(name, cfg.get(name), f.metadata["choices"])
    if n.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image size {n.image_size} is too small: bicycle supports {MIN_IMAGE_SIZE} px and up")
    for key, value in (("net.nz", n.nz), ("net.ngf", n.ngf), ("net.nef", n.nef), ("net.ndf", n.ndf),
                       ("net.d_layers", n.d_layers), ("net.d_scales", n.d_scales), ("train.steps", t.steps),
                       ("train.batch_size", t.batch_size), ("train.log_every", t.log_every),
                       ("train.sample_every", t.sample_every), ("train.checkpoint_every", t.checkpoint_every),
                       ("train.keep_checkpoints", t.keep_checkpoints), ("net.in_channels", n.in_channels),
                       ("net.out_channels", n.out_channels), ("data.modes", d.modes)):
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if t.model == "bicycle" and t.batch_size % 2:
        raise ConfigError(f"the bicycle model splits each batch into an encoded and a random half: "
                          f"train.batch_size must be even, got {t.batch_size}")
    if d.load_size is not None and d.load_size < n.image_size:
        raise ConfigError(f"data.load_size ({d.load_size}) must be at least the image size ({n.image_size})")
    if cfg.loss.mode_seeking > 0 and t.model != "bicycle":
        raise ConfigError(f"loss.mode_seeking compares the encoded and random-z outputs of the bicycle model; "
                          f"model {t.model!r} has no such pair")
    if not 0.0 <= cfg.loss.kl_warmup <= 1.0:
        raise ConfigError(f"loss.kl_warmup must be within [0, 1] (a fraction of the steps), got {cfg.loss.kl_warmup}")
    if not 0.0 <= o.decay_start <= 1.0:
        raise ConfigError(f"optim.decay_start must be within [0, 1], got {o.decay_start}")
    if n.refine < 0:
        raise ConfigError(f"net.refine must be 0 (off) or a number of channels, got {n.refine}")
    if not 0.0 <= t.ema < 1.0:
        raise ConfigError(f"train.ema must be within [0, 1) (0: off; e.g. 0.999), got {t.ema}")
    floats = {"optim.lr": o.lr, "optim.lr_d": o.lr_d, "optim.beta1": o.beta1, "optim.beta2": o.beta2,
              **{f"loss.{k}": v for k, v in dataclasses.asdict(cfg.loss).items()}}
    for key, value in floats.items():
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    for key, value in dataclasses.asdict(cfg.loss).items():
        if value < 0:
            raise ConfigError(f"loss.{key} must not be negative, got {value}")
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if o.lr_d is not None and o.lr_d <= 0:
        raise ConfigError(f"optim.lr_d must be positive, got {o.lr_d}")
    for key, value in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be within [0, 1), got {value}")
    check_seed(t.seed, "train.seed")
    check_limits(cfg)
    if n.image_size > MAX_IMAGE_SIZE:
        raise ConfigError(f"image size {n.image_size} is too large: bicycle supports up to {MAX_IMAGE_SIZE} px")
    return cfg


def check_limits(cfg: RunConfig) -> None:
    """Values that are valid numbers but cannot be meant: a run beyond :data:`MAX_STEPS`, and a PatchGAN deeper
    than the image allows (each stride-2 layer halves it; the patch map must stay at least 2x2)."""
    n, t = cfg.net, cfg.train
    if t.steps > MAX_STEPS:
        raise ConfigError(f"train.steps {t.steps} is beyond {MAX_STEPS:.0e} steps (decades of training); give a "
                          f"realistic --steps")
    deepest = max(0, (n.image_size // 4).bit_length() - 1)
    if n.d_layers > deepest:
        raise ConfigError(f"net.d_layers {n.d_layers} is too deep for {n.image_size} px: a PatchGAN there takes at "
                          f"most {deepest} stride-2 layers (give --d-layers {deepest} or less)")
