"""Batch preparation for the data path: uint8 HWC images -> crop / flip / normalise -> float CHW batch."""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor


def prepare_batch_ref(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, size: int) -> Tensor:
    """Reference (Python twin of the C++ op).

    images: uint8 [N, H, W, C]; top, left: int64 [N] crop corners; flip: bool [N] horizontal flip;
    size: crop side. Returns float32 [N, C, size, size] in [-1, 1] (x / 127.5 - 1).
    """
    out = []
    for i in range(images.shape[0]):
        t, l = int(top[i]), int(left[i])
        crop = images[i, t : t + size, l : l + size, :]
        if bool(flip[i]):
            crop = crop.flip(1)
        out.append(crop.permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0)
    return torch.stack(out)


@functools.cache
def _lut() -> Tensor:
    """float32 [256]: every uint8 value through the reference's own formula, so the C++ op matches it exactly."""
    return torch.arange(256, dtype=torch.uint8).to(torch.float32) / 127.5 - 1.0


def prepare_batch_cpp(ext: Any, images: Tensor, top: Tensor, left: Tensor, flip: Tensor, size: int) -> Tensor:
    """The C++ op (``ext`` is ``bicycle._C``): same arguments and result as :func:`prepare_batch_ref`.

    images must be uint8 on the CPU (a non-contiguous one is copied); top, left are converted to int64 and
    flip to bool. Crops that leave the image raise ValueError naming the argument and the sample.
    """
    if images.device.type != "cpu":
        raise ValueError(f"prepare_batch: images is on {images.device}; the C++ op takes CPU tensors")
    if images.dtype != torch.uint8:
        raise TypeError(f"prepare_batch: images has dtype {images.dtype}, expected torch.uint8 [N, H, W, C]")
    if images.dim() != 4:
        raise ValueError(f"prepare_batch: images must be [N, H, W, C], got shape {list(images.shape)}")
    n, _, _, c = images.shape
    out = torch.empty((n, c, int(size), int(size)), dtype=torch.float32)
    ext.prepare_batch(
        images.contiguous().numpy(), _index(top, "top"), _index(left, "left"),
        torch.as_tensor(flip).to(torch.bool).contiguous().numpy(), int(size), _lut().numpy(), out.numpy(),
        torch.get_num_threads(),
    )
    return out


def _index(t: Tensor, name: str):
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"prepare_batch: {name} has dtype {t.dtype}, expected an integer tensor")
    return t.to(torch.int64).contiguous().numpy()
