"""Perceptual measures for ``bicycle eval``: LPIPS distance and Fréchet Inception distance (FID).

Weights come only from local safetensors files given by the user: nothing is downloaded and nothing
is unpickled.

LPIPS (``bicycle-lpips/1``), the arithmetic of lpips 0.1 with ``net='alex'``:
  x in [-1, 1] -> (x - shift) / scale -> feature maps f_l (AlexNet taps after relu1..relu5);
  per layer: unit-normalise over channels, squared difference, 1x1 linear weights w_l (no bias),
  spatial mean; sum over layers.
FID (``bicycle-fid/1``): features -> Gaussian fit (mean, unbiased covariance) of each set ->
  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64. The Inception network follows the
  layout of pytorch-fid's ``pt_inception-2015-12-05`` (FIDInceptionA/C/E blocks, pool3 features,
  2048-d; like pytorch-fid, the image is resized bilinearly to 299x299 in [0, 1], then scaled to [-1, 1]).

Numerical parity with the published packages was verified on the CPU with lpips 0.1.4 and pytorch-fid
0.3.0 (torch 2.14.1, torchvision 0.29.1) by ``tools/perceptual_parity.py``, result in
``tools/results/perceptual_parity_20261201.json``: both sides given the same weights (lpips' shipped
``alex.pth`` linear layers over a seeded random AlexNet; a seeded random Inception state dict with
pytorch-fid's key set), exported to safetensors and read by ``load_lpips``/``load_inception``. LPIPS
features and distances (64/128 px, RGB and gray) and pool3 features (299/128/64 px) agree to 1e-5
absolute, FID (64 vs 64 images) and the Fréchet distance on the same statistics to 1e-5 relative.
The real ImageNet AlexNet and ``pt_inception`` weights were not used (nothing is downloaded): their
values, and the FID scale they give, are not checked. ``tests/test_perceptual.py`` tests the arithmetic
against independent straightforward computations with tiny random networks, and the key layout/shapes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bicycle.errors import CheckpointError

LPIPS_VERSION = ("bicycle-lpips/1 (AlexNet taps relu1..relu5, lin layers; lpips 0.1 arithmetic, "
                 "parity with lpips 0.1.4 verified with random trunk weights)")
FID_VERSION = ("bicycle-fid/1 (pytorch-fid Inception-v3 layout, pool3 2048-d, bilinear resize to 299; "
               "random-z outputs vs ground-truth B; parity with pytorch-fid 0.3.0 verified with random weights)")

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
ALEX_CHANNELS = (64, 192, 384, 256, 256)


class FeatureNet(Protocol):
    """x: [N, 3, H, W] -> a list of feature maps [N, C_l, H_l, W_l]."""

    def __call__(self, x: Tensor) -> list[Tensor]: ...


def to_rgb(x: Tensor) -> Tensor:
    """[N, C, H, W] with C in {1, 3} -> [N, 3, H, W] (a 1-channel image is repeated)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# --------------------------------------------------------------------------------------------- files

def file_tag(path: str | Path) -> str:
    """``name sha256:<12 hex>`` of a weights file, for the protocol record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{Path(path).name} sha256:{h.hexdigest()[:12]}"


def _read_safetensors(path: str | Path, what: str, flag: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{flag}: {what} weights file {str(p)!r} does not exist")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{flag}: {str(p)!r} is not a readable safetensors file ({exc}); "
                              f"{what} weights must be safetensors (pickled .pth files are not loaded)") from exc


def _check_keys(expected: dict[str, torch.Size], got: dict[str, Tensor], what: str, path, flag: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        raise CheckpointError(f"{flag}: {path}: missing {what} tensor(s) {', '.join(missing[:5])}"
                              + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    if unexpected:
        raise CheckpointError(f"{flag}: {path}: unexpected tensor(s) {', '.join(unexpected[:5])}"
                              + (f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
                              + f" for {what}")
    for k, shape in expected.items():
        if tuple(got[k].shape) != tuple(shape):
            raise CheckpointError(f"{flag}: {path}: tensor {k} has shape {tuple(got[k].shape)}, "
                                  f"{what} needs {tuple(shape)}")


# --------------------------------------------------------------------------------------------- LPIPS

class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet ``features`` (same indices), returning the maps after relu1..relu5."""

    TAPS = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        if min(x.shape[-2:]) < 31:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least 31x31 px, got {tuple(x.shape[-2:])}")
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                out.append(x)
        return out


class LPIPS(nn.Module):
    """LPIPS distance with any feature net and per-layer linear weights (``lin[l]``: [1, C_l, 1, 1] or [C_l])."""

    def __init__(self, net: FeatureNet, lin: Sequence[Tensor], shift: Sequence[float] = LPIPS_SHIFT,
                 scale: Sequence[float] = LPIPS_SCALE, eps: float = 1e-10) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1))
        self.lin = nn.ParameterList([nn.Parameter(w.detach().float().reshape(1, -1, 1, 1), requires_grad=False)
                                     for w in lin])
        self.eps = eps

    def _unit(self, f: Tensor) -> Tensor:
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + self.eps)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y: [N, C, H, W] in [-1, 1] (C in {1, 3}) -> [N] distances."""
        x = (to_rgb(x).float() - self.shift) / self.scale
        y = (to_rgb(y).float() - self.shift) / self.scale
        fx, fy = self.net(x), self.net(y)
        if len(fx) != len(self.lin):
            raise ValueError(f"the feature net gives {len(fx)} maps but there are {len(self.lin)} lin layers")
        total = torch.zeros(x.shape[0], device=x.device)
        for a, b, w in zip(fx, fy, self.lin):
            if a.shape[1] != w.shape[1]:
                raise ValueError(f"a feature map has {a.shape[1]} channels but its lin layer {w.shape[1]}")
            d = (self._unit(a) - self._unit(b)).pow(2)
            total = total + (d * w).sum(1).mean((-2, -1))
        return total


def _lpips_key(k: str) -> str:
    """Accept lpips' own state-dict names too: ``net.sliceS.I.weight`` -> ``features.I.weight``, and
    ``lins.N.model.1.weight`` (the ModuleList alias of ``linN`` in ``lpips.LPIPS().state_dict()``) -> ``linN...``."""
    if k.startswith("net.slice"):
        return "features." + k.split(".", 3)[2] + "." + k.split(".", 3)[3]
    parts = k.split(".", 2)
    if parts[0] == "lins" and len(parts) == 3:
        return f"lin{parts[1]}.{parts[2]}"
    return k


def load_lpips(path: str | Path, flag: str = "--lpips-weights") -> LPIPS:
    """An AlexNet LPIPS from one safetensors file: torchvision AlexNet keys ``features.{0,3,6,8,10}.{weight,bias}``
    (or lpips' ``net.sliceS.I.*``) plus ``lin{0..4}.model.1.weight`` [1, C, 1, 1] (lpips' ``lins.{0..4}.*``
    aliases of them, as in ``lpips.LPIPS().state_dict()``, are accepted when equal)."""
    raw = _read_safetensors(path, "LPIPS", flag)
    got: dict[str, Tensor] = {}
    for k, v in raw.items():
        if k.startswith("scaling_layer."):
            continue
        name = _lpips_key(k)
        if name in got and not torch.equal(got[name], v):
            raise CheckpointError(f"{flag}: {path}: {k} differs from the other tensor named {name} "
                                  f"(lpips' lins.N and linN must be the same weights)")
        got[name] = v
    net = AlexNetFeatures()
    expected = {f"features.{k}": v.shape for k, v in net.features.state_dict().items()}
    for i, c in enumerate(ALEX_CHANNELS):
        expected[f"lin{i}.model.1.weight"] = torch.Size([1, c, 1, 1])
    _check_keys(expected, got, "LPIPS (AlexNet + lin layers)", path, flag)
    net.features.load_state_dict({k[len("features."):]: got[k].float() for k in expected if k.startswith("features.")})
    lin = [got[f"lin{i}.model.1.weight"] for i in range(len(ALEX_CHANNELS))]
    return LPIPS(net, lin).eval()


@torch.no_grad()
def consecutive_pair_lpips(lpips: Callable[[Tensor, Tensor], Tensor], outs: Tensor, device="cpu",
                           batch: int = 64) -> Tensor:
    """outs: [M, N, C, H, W] -> [M]: mean LPIPS over the N-1 consecutive pairs (s_i, s_{i+1}) of each input."""
    m, n = outs.shape[:2]
    if n < 2:
        return torch.full((m,), float("nan"))
    x = outs[:, :-1].reshape(m * (n - 1), *outs.shape[2:])
    y = outs[:, 1:].reshape(m * (n - 1), *outs.shape[2:])
    d = torch.cat([lpips(x[i:i + batch].to(device), y[i:i + batch].to(device)).cpu()
                   for i in range(0, x.shape[0], batch)])
    return d.view(m, n - 1).double().mean(1)


# --------------------------------------------------------------------------------------------- FID

def gaussian_fit(features: Tensor) -> tuple[Tensor, Tensor]:
    """features [N, D] (N >= 2) -> (mean [D], unbiased covariance [D, D]), float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs features [N >= 2, D], got {tuple(f.shape)}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrt_psd(s: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), float64.
    tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2)) with A = S1^(1/2) (same eigenvalues; symmetric, so eigh);
    tiny negative eigenvalues from rounding are clamped to 0."""
    mu1, mu2, s1, s2 = mu1.double(), mu2.double(), s1.double(), s2.double()
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * tr_covmean)


class _BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv(cin, 64, 1)
        self.branch5x5_1 = _BasicConv(cin, 48, 1)
        self.branch5x5_2 = _BasicConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _FIDInceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv(cin, 192, 1)
        self.branch7x7_1 = _BasicConv(cin, c7, 1)
        self.branch7x7_2 = _BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv(cin, c7, 1)
        self.branch7x7dbl_2 = _BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv(cin, 192, 1)
        self.branch3x3_2 = _BasicConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv(cin, 192, 1)
        self.branch7x7x3_2 = _BasicConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class _FIDInceptionE(nn.Module):
    """``max_pool``: False -> FIDInceptionE_1 (avg pool, padding not counted); True -> FIDInceptionE_2."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv(cin, 320, 1)
        self.branch3x3_1 = _BasicConv(cin, 384, 1)
        self.branch3x3_2a = _BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv(cin, 448, 1)
        self.branch3x3dbl_2 = _BasicConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3 up to pool3: x [N, 1|3, H, W] in [-1, 1] -> [N, 2048].
    Parameter names are torchvision's Inception3 names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _BasicConv(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv(80, 192, 3)
        self.Mixed_5b = _FIDInceptionA(192, 32)
        self.Mixed_5c = _FIDInceptionA(256, 64)
        self.Mixed_5d = _FIDInceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _FIDInceptionC(768, 128)
        self.Mixed_6c = _FIDInceptionC(768, 160)
        self.Mixed_6d = _FIDInceptionC(768, 160)
        self.Mixed_6e = _FIDInceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = _FIDInceptionE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        # pytorch-fid's order of operations: resize the image in [0, 1], then scale to [-1, 1]. Resizing in
        # [-1, 1] is the same arithmetic but rounds differently (up to 2.7e-7 at the input), which the seeded
        # random Inception of tools/perceptual_parity.py amplified to 9e-5 in pool3 features.
        x = F.interpolate((to_rgb(x).float() + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def inception_expected_shapes() -> dict[str, torch.Size]:
    """The tensors a FID Inception weights file must hold (``num_batches_tracked`` optional), with shapes."""
    with torch.device("meta"):
        net = FIDInceptionV3()
    return {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def _inception_ignorable(k: str) -> bool:
    return k.endswith("num_batches_tracked") or k in ("fc.weight", "fc.bias") or k.startswith("AuxLogits.")


def load_inception(path: str | Path, flag: str = "--inception-weights") -> FIDInceptionV3:
    """pytorch-fid's pt_inception-2015-12-05 weights, converted to safetensors with their state-dict names
    (``fc.*``, ``AuxLogits.*`` and ``num_batches_tracked`` are accepted and ignored)."""
    raw = _read_safetensors(path, "FID Inception", flag)
    got = {k: v for k, v in raw.items() if not _inception_ignorable(k)}
    expected = inception_expected_shapes()
    _check_keys(expected, got, "FID Inception-v3", path, flag)
    net = FIDInceptionV3()
    net.load_state_dict({k: v.float() for k, v in got.items()}, strict=False)
    return net.eval()


@torch.no_grad()
def extract_features(net: Callable[[Tensor], Tensor], images: Tensor, device="cpu", batch: int = 32) -> Tensor:
    """images [N, C, H, W] in [-1, 1] -> features [N, D] (float64, on the CPU)."""
    return torch.cat([net(images[i:i + batch].to(device)).double().flatten(1).cpu()
                      for i in range(0, images.shape[0], batch)])


def fid(net: Callable[[Tensor], Tensor], fake: Tensor, real: Tensor, device="cpu", batch: int = 32) -> float:
    """FID between two image sets [N, C, H, W] (each N >= 2) under the feature extractor ``net``."""
    mu1, s1 = gaussian_fit(extract_features(net, fake, device, batch))
    mu2, s2 = gaussian_fit(extract_features(net, real, device, batch))
    return frechet_distance(mu1, s1, mu2, s2)
