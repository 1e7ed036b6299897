"""The tensor layouts of the original BicycleGAN's networks (github.com/junyanz/BicycleGAN, models/networks.py)
and where each tensor lives in bicycle's networks.

G: ``G_Unet_add_all`` (z at every down-sampling; nested ``model.[submodule.]*{down,up}.N``) or
``G_Unet_add_input`` (z at the input only; nested ``model.model.[K.model.]*N``, K the index of the
submodule, which depends on the norm). Level i (0 = outermost) of depth D: a 4x4 stride-2 conv
``input_i (+ nz) -> ngf*min(2**i, 8)``, a norm on the middle levels, an up conv (basic: ConvTranspose2d 4x4;
bilinear: Upsample + ReflectionPad2d(1) + Conv2d 3x3) ``(2x) ngf*min(2**i, 8) -> outer_i`` and a norm except
at the outermost level. bicycle's :class:`bicycle.nn.unet.UNetGenerator` has the same layers as
``downs.i`` / ``ups.i``.

E: ``E_ResNet`` (``conv.0`` 4x4 stride-2 conv, ``conv.k`` BasicBlocks k = 1..n-1 of nef*min(4, k) ->
nef*min(4, k+1) channels) or ``E_NLayers`` (n stride-2 4x4 convs to nef*min(2**k, 4) channels, as bicycle's ConvEncoder), then
``fc.0`` (mu) and ``fcVar.0`` (logvar). bicycle: :class:`bicycle.nn.encoder.ResNetEncoder` /
:class:`~bicycle.nn.encoder.ConvEncoder` with ``fc_mu`` / ``fc_logvar``.

Norms: ``instance`` layers (affine False, no running statistics in the original) hold no tensors; PyTorch
< 0.4 saved running_mean / running_var (0.4.0 also num_batches_tracked) for them, which the original's
loader drops and so does this one (:data:`STATS`). ``batch`` layers hold weight, bias, running_mean,
running_var and num_batches_tracked (absent from files of PyTorch < 0.4: the original's loader then
starts it at 0). ``none`` removes the layers, which shifts the indices of ``G_Unet_add_input`` and of E.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NORMS = ("instance", "batch", "none")  # preference order when the tensors cannot tell (the original's default first)
UPSAMPLES = ("basic", "bilinear")
STATS = ("running_mean", "running_var", "num_batches_tracked")
OPTIONAL = frozenset({"num_batches_tracked"})  # of BatchNorm layers: files of PyTorch < 0.4 lack it

NET_G = {"unet_128": 7, "unet_256": 8}  # the original's --netG -> down-samplings
BACKBONES = {7: "unet128", 8: "unet256"}  # bicycle's fixed-depth U-Nets
NET_E = {"resnet_128": ("resnet", 4), "resnet_256": ("resnet", 5), "conv_128": ("conv", 4), "conv_256": ("conv", 5)}


@dataclass(frozen=True)
class Layer:
    """One layer that holds tensors: its module prefix in the original's state dict and in bicycle's network.
    ``kind``: conv (weight [cout, cin, k, k]), convT (weight [cin, cout, k, k]), linear ([cout, cin]),
    bnorm (BatchNorm2d over cout channels) or inorm (InstanceNorm2d: no tensors)."""

    orig: str
    ours: str
    kind: str
    cin: int = 1
    cout: int = 1
    k: int = 1

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name (without the prefix) -> shape, in the original's state dict."""
        if self.kind == "conv":
            return {"weight": (self.cout, self.cin, self.k, self.k), "bias": (self.cout,)}
        if self.kind == "convT":
            return {"weight": (self.cin, self.cout, self.k, self.k), "bias": (self.cout,)}
        if self.kind == "linear":
            return {"weight": (self.cout, self.cin), "bias": (self.cout,)}
        if self.kind == "bnorm":
            c = (self.cout,)
            return {"weight": c, "bias": c, "running_mean": c, "running_var": c, "num_batches_tracked": ()}
        return {}


def _norm(norm: str, orig: str, ours: str, channels: int) -> list[Layer]:
    if norm == "none":
        return []
    return [Layer(orig, ours, "bnorm" if norm == "batch" else "inorm", channels, channels)]


@dataclass(frozen=True)
class GArch:
    """What a G state dict's names determine: ``where`` (input / all), ``depth`` (down-samplings),
    ``upsample`` and ``norm``."""

    where: str
    depth: int
    upsample: str
    norm: str


@dataclass(frozen=True)
class EArch:
    """What an E state dict's names determine: ``kind`` (resnet / conv), ``blocks`` (the original's
    n_blocks / n_layers: its down-samplings) and ``norm``."""

    kind: str
    blocks: int
    norm: str


def g_layers(arch: GArch, in_nc: int = 1, out_nc: int = 1, nz: int = 1, ngf: int = 1) -> list[Layer]:
    """Every layer of the original's G with these channels, outermost level first."""
    basic = arch.upsample == "basic"
    up_kind, up_k = ("convT", 4) if basic else ("conv", 3)
    sub = 3 if arch.norm != "none" else 2  # index of the submodule inside a middle UnetBlock (add_input)
    prefix = "model.model."
    layers: list[Layer] = []
    for i in range(arch.depth):
        outer, inner = i == 0, i == arch.depth - 1
        inp = in_nc if outer else ngf * min(2 ** (i - 1), 8)
        outc = out_nc if outer else inp
        inner_nc = ngf * min(2**i, 8)
        z = nz if (arch.where == "all" or outer) else 0
        if arch.where == "all":
            p = "model." + "submodule." * i
            down, dnorm = p + ("down.0" if outer else "down.1"), p + "down.2"
            up, unorm = p + ("up.1" if basic else "up.3"), p + ("up.2" if basic else "up.4")
        else:
            p = prefix
            if outer:
                down, dnorm, here = p + "0", "", 1
                up, unorm = p + ("3" if basic else "5"), ""
            elif inner:
                down, dnorm, here = p + "1", "", 0
                up, unorm = p + ("3" if basic else "5"), p + ("4" if basic else "6")
            else:
                down, dnorm, here = p + "1", p + "2", sub
                up, unorm = p + str(sub + 2 if basic else sub + 4), p + str(sub + 3 if basic else sub + 5)
            prefix = p + f"{here}.model."
        layers.append(Layer(down, f"downs.{i}.{0 if outer else 1}", "conv", inp + z, inner_nc, 4))
        if not (outer or inner):
            layers += _norm(arch.norm, dnorm, f"downs.{i}.2", inner_nc)
        layers.append(Layer(up, f"ups.{i}.{1 if basic else 3}", up_kind, inner_nc if inner else 2 * inner_nc, outc, up_k))
        if not outer:
            layers += _norm(arch.norm, unorm, f"ups.{i}.{2 if basic else 4}", outc)
    return layers


def e_layers(arch: EArch, in_nc: int = 1, nz: int = 1, nef: int = 1) -> list[Layer]:
    """Every layer of the original's E (built with vaeLike=True, as its BicycleGAN model builds it)."""
    has_norm = arch.norm != "none"
    layers = [Layer("conv.0", "conv.0", "conv", in_nc, nef, 4)]
    if arch.kind == "resnet":
        for k in range(1, arch.blocks):
            cin, cout = nef * min(4, k), nef * min(4, k + 1)
            p = f"conv.{k}."
            if has_norm:
                layers += _norm(arch.norm, p + "conv.0", p + "conv.0", cin)
            layers.append(Layer(p + ("conv.2" if has_norm else "conv.1"), p + "conv.2", "conv", cin, cin, 3))
            if has_norm:
                layers += _norm(arch.norm, p + "conv.3", p + "conv.3", cin)
            layers.append(Layer(p + ("conv.5.0" if has_norm else "conv.3.0"), p + "conv.5", "conv", cin, cout, 3))
            layers.append(Layer(p + "shortcut.1", p + "shortcut.1", "conv", cin, cout, 1))
        features = nef * min(4, arch.blocks)
    else:
        for n in range(1, arch.blocks):
            cin, cout = nef * min(2 ** (n - 1), 4), nef * min(2**n, 4)
            idx, ours = (2 + 3 * (n - 1) if has_norm else 2 + 2 * (n - 1)), 2 + 3 * (n - 1)
            layers.append(Layer(f"conv.{idx}", f"conv.{ours}", "conv", cin, cout, 4))
            layers += _norm(arch.norm, f"conv.{idx + 1}", f"conv.{ours + 1}", cout)
        features = nef * min(2 ** (arch.blocks - 1), 4)
    layers += [Layer("fc.0", "fc_mu", "linear", features, nz), Layer("fcVar.0", "fc_logvar", "linear", features, nz)]
    return layers


@dataclass
class Match:
    """How a state dict's names compare with a layout: required tensors absent, tensors the layout does
    not have, and the InstanceNorm running statistics (tolerated, dropped)."""

    missing: list[str]
    unexpected: list[str]
    tolerated: list[str]

    @property
    def errors(self) -> int:
        return len(self.missing) + len(self.unexpected)


def match(keys: Iterable[str], layers: list[Layer]) -> Match:
    keys = set(keys)
    expected, optional, tolerated = set(), set(), set()
    for layer in layers:
        names = {f"{layer.orig}.{t}" for t in layer.shapes()}
        expected |= {n for n in names if n.rsplit(".", 1)[1] not in OPTIONAL}
        optional |= names - expected
        if layer.kind == "inorm":
            tolerated |= {f"{layer.orig}.{s}" for s in STATS}
    return Match(sorted(expected - keys), sorted(keys - expected - optional - tolerated), sorted(keys & tolerated))


def g_where(keys: Iterable[str]) -> str | None:
    """``all`` (G_Unet_add_all), ``input`` (G_Unet_add_input) or None (not the original's U-Net)."""
    keys = list(keys)
    if any(k.startswith("model.down.") for k in keys):
        return "all"
    if any(k.startswith("model.model.") for k in keys):
        return "input"
    return None


def looks_like_encoder(keys: Iterable[str]) -> bool:
    return any(k.startswith(("fc.0.", "fcVar.0.")) for k in keys)


def looks_like_generator(keys: Iterable[str]) -> bool:
    return g_where(keys) is not None


def best(candidates: Mapping[object, Match]) -> tuple[int, list[object]]:
    """The fewest errors and every candidate with that many (in the mapping's order)."""
    fewest = min(m.errors for m in candidates.values())
    return fewest, [c for c, m in candidates.items() if m.errors == fewest]


def g_candidates(keys: Iterable[str], where: str, depths: Iterable[int] = range(2, 17)) -> dict[GArch, Match]:
    keys = set(keys)
    return {arch: match(keys, g_layers(arch)) for arch in
            (GArch(where, d, u, n) for d in depths for u in UPSAMPLES for n in NORMS)}


def e_candidates(keys: Iterable[str], blocks: Iterable[int] = range(2, 9)) -> dict[EArch, Match]:
    keys = set(keys)
    kinds = ("resnet",) if any(".shortcut." in k for k in keys) else ("conv", "resnet")
    return {arch: match(keys, e_layers(arch)) for arch in
            (EArch(kd, b, n) for kd in kinds for b in blocks for n in NORMS)}
