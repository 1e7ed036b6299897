"""A trained model from Python: ``bicycle.load(path)`` and :class:`Model` (translate, encode, interpolate).

No training code behind it: G and E are rebuilt from the file's own config and run in eval mode.

Inputs ("image-likes"): a file path, a Pillow image, a uint8 numpy array [H, W] or [H, W, C], or a
float tensor [C, S, S] already in the model's range [-1, 1] at the model's size and channels (a
batch [N, C, S, S] counts as N inputs). Paths, images and arrays are converted to the model's
channels as ``bicycle sample --input`` converts files (RGB -> 1 channel by ITU-R 601 luma, grey -> 3 by
repetition, alpha dropped), resized to the model's size (bicubic) and scaled to [-1, 1] (u8 / 127.5 - 1).

Bad input is one :class:`~bicycle.errors.BicycleError` line: NaN/inf or out-of-range tensors (beyond
[-1, 1] by more than :data:`RANGE_TOLERANCE`) and codes, empty images, arrays and batches (:class:`DataError`),
seeds and counts that break the CLI's rule (:mod:`bicycle.arguments`; :class:`ConfigError`).
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bicycle.config import RunConfig
from bicycle.data.images import convert_image, image_to_tensor, open_image
from bicycle.arguments import check_count, check_seed
from bicycle.errors import ConfigError, DataError, InputTypeError
from bicycle.inference.loading import describe_weights, load_model, pick_weights
from bicycle.inference.posterior import check_z_source
from bicycle.inference.zsource import ZSource, z_source_for
from bicycle.nets import Nets

ImageLike = Union[str, Path, Image.Image, np.ndarray, Tensor]
BATCH = 32  # (input, code) pairs per generator call
RANGE_TOLERANCE = 1e-3  # a tensor input may stray this far outside [-1, 1] (rounding), no further


def load(path: str | Path, device: str = "auto", weights: str = "auto") -> Model:
    """A run dir (its newest checkpoint), a checkpoint file or exported weights (``bicycle export``).
    Non-finite weights are refused, naming the file (:class:`bicycle.errors.NonFiniteError`). ``weights``: ``auto``,
    the moving average of G and E when the run kept one (``--ema``), else the weights as trained; ``ema``; ``raw``
    (:attr:`Model.weights` says which)."""
    from bicycle.inference.posterior import embedded_posterior

    ckpt, nets, dev = load_model(path, device, weights)
    embedded = embedded_posterior(ckpt.tensors, ckpt.path) if ckpt.weights_only else None
    chosen = pick_weights(ckpt, weights)
    return Model(nets, ckpt.config, dev, step=ckpt.step, path=ckpt.path, weights_only=ckpt.weights_only,
                 posterior=embedded, weights=chosen, weights_note=describe_weights(ckpt, chosen))


def to_pil(t: Tensor) -> Image.Image:
    """[C, H, W] in [-1, 1] -> a Pillow image, mode ``L`` for 1 channel, ``RGB`` for 3."""
    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


class Model:
    """A trained BicycleGAN (or baseline) for inference. ``nets``: G (and E when the model has one)."""

    def __init__(self, nets: Nets, config: RunConfig, device: torch.device, step: int = 0,
                 path: Path | None = None, weights_only: bool = False, posterior=None, weights: str = "raw",
                 weights_note: str = "") -> None:
        self.nets, self.config, self.device, self.step, self.path = nets, config, device, step, path
        self.weights_only = weights_only  # exported weights (bicycle export): the posterior, if any, is inside
        self.weights = weights  # "ema": the moving averages of G and E; "raw": the weights as trained
        self.weights_note = weights_note  # one line for the user: which weights translate
        self._embedded = posterior  # the mixture exported weights carry
        self._posterior, self._posterior_origin = posterior, path  # None: read from the run dir when first asked for
        for _, m in nets.items():
            m.eval()

    @property
    def nz(self) -> int:
        return self.config.net.nz

    @property
    def image_size(self) -> int:
        return self.config.net.image_size

    @property
    def has_encoder(self) -> bool:
        return self.nets.E is not None

    def __repr__(self) -> str:
        n = self.config.net
        return (f"bicycle.Model({self.config.train.model}, {n.backbone}/{n.inject}, {n.image_size} px, "
                f"{n.in_channels}->{n.out_channels} channels, nz {n.nz}, step {self.step}, {self.device})")

    # -- inputs -------------------------------------------------------------------------------------------

    def prepare(self, images: ImageLike | Sequence[ImageLike], channels: int | None = None) -> Tensor:
        """Image-likes -> float32 [N, C, S, S] in [-1, 1] on the CPU (C: the model's input channels, or
        ``channels``). A single image-like gives N = 1."""
        c = channels or self.config.net.in_channels
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise DataError("no inputs given (an empty list)")
        parts = [self._one(x, c) for x in items]
        return torch.cat(parts)

    def _one(self, x: ImageLike, c: int) -> Tensor:
        s = self.image_size
        if isinstance(x, (str, Path)):
            return image_to_tensor(open_image(x, c), s, c)[None]
        if isinstance(x, Image.Image):
            if 0 in x.size:
                raise DataError(f"an image input is empty ({x.size[0]}x{x.size[1]} px)")
            return image_to_tensor(convert_image(x, c), s, c)[None]
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
                raise DataError(f"an array input must be uint8 [H, W] or [H, W, 1|3|4], got {x.dtype} {list(x.shape)} "
                                f"(floats in [0, 1]: pass (x * 255).round().astype(np.uint8))")
            if x.shape[0] == 0 or x.shape[1] == 0:
                raise DataError(f"an array input is empty ({x.shape[1]}x{x.shape[0]} px)")
            return image_to_tensor(Image.fromarray(x[:, :, 0] if x.ndim == 3 and x.shape[2] == 1 else x), s, c)[None]
        if isinstance(x, Tensor):
            t = x[None] if x.dim() == 3 else x
            if t.numel() == 0:
                raise DataError(f"a tensor input is empty: an empty batch or image {list(x.shape)}")
            if t.dim() != 4 or tuple(t.shape[1:]) != (c, s, s) or not t.is_floating_point():
                raise DataError(f"a tensor input must be float [{c}, {s}, {s}] or [N, {c}, {s}, {s}] in [-1, 1] "
                                f"(this model's channels and size), got {x.dtype} {list(x.shape)}")
            t = t.detach().float().cpu()
            if not bool(torch.isfinite(t).all()):
                raise DataError("a tensor input holds NaN or inf")
            lo, hi = float(t.min()), float(t.max())
            if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
                raise DataError(f"a tensor input must be in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                                f"(images in [0, 1]: pass x * 2 - 1)")
            return t
        raise InputTypeError(f"cannot translate a {type(x).__name__}: give a path, a PIL image, a uint8 array or a tensor")

    def _codes(self, z: Tensor, n_inputs: int) -> Tensor:
        """z [nz], [K, nz] (shared by every input) or [N, K, nz] -> [N, K, nz] float32 on the CPU."""
        z = _as_codes(z)
        if z.dim() == 1:
            z = z[None]
        if z.dim() == 2:
            z = z[None].expand(n_inputs, -1, -1)
        if z.dim() != 3 or z.shape[0] != n_inputs or z.shape[2] != self.nz:
            raise DataError(f"z must be [{self.nz}], [K, {self.nz}] or [{n_inputs}, K, {self.nz}], got {list(z.shape)}")
        if z.shape[1] == 0:
            raise DataError(f"z holds no codes ({list(z.shape)})")
        return z

    def z_source(self, name: str = "auto", temperature: float = 1.0) -> ZSource:
        """Where random codes come from: ``"prior"``, standard normal (the paper's); ``"posterior"``, the Gaussian
        mixture fitted to the encoder's means (``bicycle fit-posterior RUN``: RUN/posterior.safetensors for this
        checkpoint, or the one exported weights carry; an error when there is none or it is stale); ``"auto"``, that
        mixture when there is one, else the prior (:attr:`ZSource.why` says why). ``temperature`` t scales the
        codes' spread: N(0, t^2 I), or the mixture's covariances by t^2."""
        if name == "posterior" and self._posterior is not None:
            return ZSource(self._posterior, self._posterior_origin, temperature)
        source = z_source_for(name, temperature, self.path, self.step, self.nz, self.weights_only, self._embedded)
        if source.mixture is not None:
            self._posterior, self._posterior_origin = source.mixture, source.origin
        return source

    def random_z(self, n_inputs: int, n: int, seed: int | None = None, z_source: str | ZSource = "prior",
                 temperature: float = 1.0) -> Tensor:
        """[n_inputs, n, nz] random codes on the CPU; the same seed gives the same codes, and input i's codes
        do not depend on how many inputs follow it (those of ``bicycle sample``). ``z_source``: a name for
        :meth:`z_source` (with ``temperature``), or a :class:`ZSource`."""
        if not isinstance(z_source, ZSource):
            check_z_source(z_source, temperature)
        n = check_count(n, "n")
        seed = secrets.randbits(31) if seed is None else check_seed(seed)
        source = z_source if isinstance(z_source, ZSource) else self.z_source(z_source, temperature)
        return source.draw(n_inputs, n, self.nz, seed)

    def posterior(self):
        """The run's :class:`bicycle.inference.mixture.GaussianMixture` (RUN/posterior.safetensors), checked against
        this model's step; loaded once."""
        return self.z_source("posterior").mixture

    # -- the model ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, a: Tensor, z: Tensor) -> Tensor:
        """a: [N, Cin, S, S] in [-1, 1], z: [N, K, nz] -> [N, K, Cout, S, S] on the CPU (batched on the device)."""
        n, k = z.shape[:2]
        a_rep = a.unsqueeze(1).expand(n, k, *a.shape[1:]).reshape(n * k, *a.shape[1:])
        flat = z.reshape(n * k, self.nz)
        outs = [self.nets.G(a_rep[i:i + BATCH].to(self.device), flat[i:i + BATCH].to(self.device)).float().cpu()
                for i in range(0, n * k, BATCH)]
        out = torch.cat(outs)
        return out.view(n, k, *out.shape[1:])

    @torch.inference_mode()
    def encode(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """The code of each image: mu(E(B)), [nz] for one image-like, [N, nz] for a list (or a batch tensor).
        Images are of the model's output domain (B), converted to its output channels."""
        if self.nets.E is None:
            raise ConfigError(f"this model ({self.config.train.model}) has no encoder: it cannot encode images")
        b = self.prepare(images, self.config.net.out_channels)
        mu = torch.cat([self.nets.E(b[i:i + BATCH].to(self.device))[0].float().cpu() for i in range(0, len(b), BATCH)])
        return mu[0] if _single(images) else mu

    def translate(self, inputs: ImageLike | Sequence[ImageLike], n: int = 8, seed: int | None = None,
                  z: Tensor | None = None, reference: ImageLike | Sequence[ImageLike] | None = None,
                  tensors: bool = False, z_source: str | ZSource = "auto", temperature: float = 1.0) -> list:
        """Outputs G(A, z) for each input A.

        Codes: ``n`` random codes per input (seeded by ``seed``; None draws a fresh seed); or ``z`` given
        ([nz], [K, nz] shared by every input, or [N, K, nz]); or ``reference``: one image-like or a list,
        encoded (:meth:`encode`) to one code each, the paper's "style from a reference". ``n`` counts only
        for random codes, and so do ``z_source`` ("auto", the default: the run's posterior when there is one, else
        the prior; "prior"; "posterior"; or a :class:`ZSource`) and ``temperature`` (see :meth:`z_source`).

        Returns, for one input, a list of its outputs (Pillow images, ``L`` or ``RGB``), for a list of
        inputs a list of such lists; ``tensors=True``: [K, C, S, S] or [N, K, C, S, S] in [-1, 1] instead.
        """
        if sum(v is not None for v in (z, reference)) > 1:
            raise ConfigError("give z or reference, not both")
        a = self.prepare(inputs)
        if reference is not None:
            codes = self._codes(self.encode(reference), len(a))
        elif z is not None:
            codes = self._codes(z, len(a))
        else:
            codes = self.random_z(len(a), n, seed, z_source=z_source, temperature=temperature)
        out = self.generate(a, codes)
        if tensors:
            return out[0] if _single(inputs) else out
        images = [[to_pil(t) for t in row] for row in out]
        return images[0] if _single(inputs) else images

    def interpolate(self, image: ImageLike, z0: Tensor | ImageLike, z1: Tensor | ImageLike, frames: int = 8,
                    tensors: bool = False) -> list:
        """``frames`` outputs for one input, z walking linearly from z0 to z1 (each a code [nz], or a
        reference image-like, encoded). Returns Pillow images, or [frames, C, S, S] with ``tensors``."""
        frames = check_count(frames, "frames", minimum=2)
        if not _single(image):
            raise DataError("interpolate takes one input image")
        ends = [self._code(z) for z in (z0, z1)]
        t = torch.linspace(0, 1, frames)[:, None]
        codes = (1 - t) * ends[0] + t * ends[1]
        return self.translate(image, z=codes, tensors=tensors)

    def _code(self, z: Tensor | ImageLike) -> Tensor:
        if isinstance(z, Tensor) and z.dim() == 1:
            if z.shape[0] != self.nz:
                raise DataError(f"a code must be [{self.nz}], got {list(z.shape)}")
            return _as_codes(z)
        return self.encode(z)


def _as_codes(z: object) -> Tensor:
    """Codes given by the caller (a tensor, an array, nested lists of numbers) -> float32 on the CPU, finite."""
    try:
        t = torch.as_tensor(z).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputTypeError(f"z must be numbers (a tensor or an array), got a {type(z).__name__}: {exc}") from None
    if not bool(torch.isfinite(t).all()):
        raise DataError("z holds NaN or inf")
    return t


def _single(x: object) -> bool:
    """One input (not a list, tuple or [N, C, S, S] batch tensor)."""
    if isinstance(x, (list, tuple)):
        return False
    return not (isinstance(x, Tensor) and x.dim() == 4)
