"""Typed configuration: frozen dataclasses, presets and one validation pass.

The CLI is a thin layer that turns flags into :func:`resolve` arguments and :class:`ConfigError`
into a usage error. The resolved :class:`RunConfig` is stored in the run dir and inside every
checkpoint, so weights can be rebuilt without repeating flags.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from bicycle.arguments import MAX_SEED, check_seed
from bicycle.errors import ConfigError

MODELS = ("bicycle", "pix2pix", "cae-gan", "cvae-gan", "clr-gan")
NORMS = ("instance", "batch", "none")
UPSAMPLES = ("basic", "bilinear")
ENCODERS = ("resnet", "conv")
GAN_MODES = ("lsgan", "vanilla")
DIRECTIONS = ("AtoB", "BtoA")
PRECISIONS = ("fp32", "bf16")
BAD_IMAGES = ("error", "skip")  # what the start-up data check does with files that cannot be used
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096  # 8x the largest size the original ran (512 px); larger cannot fit a U-Net step in memory
MAX_STEPS = 10**9  # ~30 years at 1 s/step: more is a typo


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of G, E, D and D2 (paper defaults). Channels are filled in from the dataset."""

    backbone: str = "unet256"
    inject: str = "all"
    encoder: str = "resnet"
    image_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    nz: int = 8
    ngf: int = 64
    nef: int = 64
    ndf: int = 64
    norm: str = "instance"
    upsample: str = "basic"
    dropout: bool = True
    d_layers: int = 3
    d_scales: int = 2
    gan_mode: str = "lsgan"


@dataclass(frozen=True)
class LossWeights:
    """lambda_* of the paper. ``kl_warmup``: lambda_KL ramps linearly from kl/W to kl over the first
    W = ``kl_warmup * train.steps`` steps (KL annealing, Bowman et al., 2016); 0 keeps it constant, as the paper."""

    l1: float = 10.0
    kl: float = 0.01
    z: float = 0.5
    gan: float = 1.0
    gan2: float = 1.0
    kl_warmup: float = 0.0
    # "free bits" (Kingma et al., 2016): each dimension's batch-mean KL is floored at this many nats before the
    # sum over dimensions (and the batch) is restored; 0: off, as the paper
    kl_free_bits: float = 0.0
    # mode seeking (Mao et al., 2019, MSGAN): lambda_ms / (|G(A, z_rand) - G(A, z_enc)|_1 / |z_rand - z_enc|_1 + 1e-5),
    # on the random branch only (the encoded output and code detached); bicycle model only; 0: off, as the paper
    mode_seeking: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """Adam for each of G, E, D, D2; constant LR, then linear decay to 0 from ``decay_start`` (a
    fraction of the steps) to the end. ``lr_d``: the discriminators' LR (None: ``lr``, as the paper;
    a larger one is the two time-scale update rule of Heusel et al., 2017)."""

    lr: float = 2e-4
    lr_d: float | None = None
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start: float = 0.5


@dataclass(frozen=True)
class DataConfig:
    """``data``: a dataset name (see ``bicycle plugins``) or a folder path (an existing path wins)."""

    data: str = "shapes"
    direction: str = "AtoB"
    load_size: int | None = None
    flip: bool = True
    modes: int = 8
    # Not resumable: it changes which files are trained on.
    bad_images: str = "error"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "bicycle"
    steps: int = 200_000
    batch_size: int = 2
    seed: int = 0
    device: str = "auto"
    impl: str = "auto"
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # Execution only (the mathematics is the same): None = CUDA graphs on CUDA devices, eager elsewhere.
    cuda_graphs: bool | None = None
    precision: str = "fp32"  # "bf16": autocast + channels_last (opt-in)
    compile: bool = False  # torch.compile each network


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

# Keys a resumed run may change; any other difference is a usage error.
RESUMABLE_KEYS = frozenset(
    {"train.steps", "train.log_every", "train.sample_every", "train.checkpoint_every", "train.keep_checkpoints", "train.device", "train.impl",
     "train.cuda_graphs", "train.precision", "train.compile"}
)

# Presets. "demo" is calibrated to train within 8 minutes on a 2-core CPU (375-422 s measured, benchmarks/results/ablation).
PRESETS: dict[str, RunConfig] = {
    # demo: the paper's networks and losses at 32 px with widths 32, batch 8 instead of 2 and a 5x
    # larger LR so that modes appear within minutes (measured: at lr 2e-4 the run collapsed to one or
    # two colours in the same budget). lambda_KL: the KL is a SUM over the encoded half-batch, 4x the
    # paper's, so the paper's per-sample balance is 0.0025; the demo uses 10x that (0.025), ramped up
    # over the first 30% of 5000 steps. Calibrated on the built-in shapes dataset
    # (benchmarks/results/demo_calibration_20261126.json): at the paper's balance the encoder used all
    # 8 dimensions with narrow posteriors, so random z landed where no encoded ground truth was and often
    # gave blends of colours; the stronger, ramped KL leaves 2-4 dimensions in use and the rest at the prior.
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


# The original's recipe per size where it differs from the 256-px one: unet_128, the 2-layer multi-scale
# discriminator (basic_128_multi), resnet_128 (the encoder's blocks follow the size by themselves).
PAPER_SIZE_RECIPES: dict[int, dict[str, Any]] = {128: {"net.backbone": "unet128", "net.d_layers": 2}}


# The demo preset above 32 px (a user's images): the paper's batch (2) and lambda_KL (0.01), widths 16 and, up to
# 128 px, the original's 128-px discriminator (2 layers): a 128-px step costs a fifth of one at the 32-px recipe's
# batch 8 and widths 32, so the same minutes buy 5x the updates. Chosen on shapes-unequal and shapes-outline-big at
# 128 px (benchmarks/README.md, "Defaults on unseen data"). Up to 128 px the LR is twice the 32-px demo's: at one
# image per update per network 1e-3 left G too slow to learn every fill colour (benchmarks/README.md, "A larger LR");
# a 256-px smoke run at 2e-3 drew no valid output, so there the demo keeps 1e-3.
DEMO_LARGER: dict[str, Any] = {"train.batch_size": 2, "loss.kl": 0.01, "net.ngf": 16, "net.nef": 16, "net.ndf": 16,
                               "net.inject": "all-film"}
DEMO_LARGER_SMALL = 128  # up to this size: the original's 128-px D (its stride-2 layers) and DEMO_LARGER_SMALL_LR
DEMO_LARGER_SMALL_LR = 2e-3
DEMO_STEPS_128 = 4500


def demo_steps(image_size: int) -> int:
    """The demo preset's length at ``image_size`` px: 5000 steps at 32 px; above, :data:`DEMO_STEPS_128` at 128 px
    and 4x fewer per 2x the size (a step's cost grows with the pixel count), at most 5000 (rounded to 10: 5000 at
    64 px, 4500 at 128, 1120 at 256), so that a run on a user's images ends by itself within ~13 minutes on a 2-core
    CPU (benchmarks/README.md)."""
    if image_size <= 32:
        return 5000
    return max(10, min(5000, int(round(DEMO_STEPS_128 * (128 / image_size) ** 2 / 10)) * 10))


def preset_config(name: str, overrides: dict[str, Any], *, decoder_points: bool = True) -> RunConfig:
    """A preset with ``overrides``; the ``paper`` preset at 128 px takes the original's 128-px recipe
    (:data:`PAPER_SIZE_RECIPES`) for every key the overrides leave out; the ``demo`` preset above 32 px takes
    :data:`DEMO_LARGER` (and up to :data:`DEMO_LARGER_SMALL` px a 2-layer D and lr :data:`DEMO_LARGER_SMALL_LR`) for
    every key the overrides leave out, and a length that follows the image size (:func:`demo_steps`) unless
    ``train.steps`` is given, with a sample grid and a checkpoint every tenth of the run. ``decoder_points``: whether
    the run's backbone offers decoder injection points; without them the demo keeps the preset's concatenating
    injector."""
    cfg = replace(PRESETS[name], overrides)
    extra: dict[str, Any] = {}
    if name == "paper":
        extra = dict(PAPER_SIZE_RECIPES.get(cfg.net.image_size, {}))
    elif name == "demo" and cfg.net.image_size > 32:
        extra = dict(DEMO_LARGER)
        if not decoder_points:
            del extra["net.inject"]
        if cfg.net.image_size <= DEMO_LARGER_SMALL:
            extra["net.d_layers"] = PAPER_SIZE_RECIPES[DEMO_LARGER_SMALL]["net.d_layers"]
            extra["optim.lr"] = DEMO_LARGER_SMALL_LR
        if overrides.get("train.steps") is None:
            steps = demo_steps(cfg.net.image_size)
            extra.update({"train.steps": steps, "train.sample_every": max(1, steps // 10),
                          "train.checkpoint_every": max(1, steps // 10)})
    return replace(cfg, {k: v for k, v in extra.items() if overrides.get(k) is None})


def replace(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply {"net.nz": 16, ...}; None values are ignored. Unknown keys are a ConfigError."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if section not in _SECTION_TYPES or name not in {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}:
            raise ConfigError(f"unknown config key {key!r}")
        sections.setdefault(section, {})[name] = value
    kwargs = {s: dataclasses.replace(getattr(cfg, s), **v) for s, v in sections.items()}
    return dataclasses.replace(cfg, **kwargs)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


def validate(cfg: RunConfig) -> RunConfig:
    """One validation pass over everything that does not need the plugin registry."""
    n, t, o, d = cfg.net, cfg.train, cfg.optim, cfg.data
    _choice("train.model", t.model, MODELS)
    _choice("net.norm", n.norm, NORMS)
    _choice("net.upsample", n.upsample, UPSAMPLES)
    _choice("net.encoder", n.encoder, ENCODERS)
    _choice("net.gan_mode", n.gan_mode, GAN_MODES)
    _choice("data.direction", d.direction, DIRECTIONS)
    _choice("train.precision", t.precision, PRECISIONS)
    _choice("data.bad_images", d.bad_images, BAD_IMAGES)
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
