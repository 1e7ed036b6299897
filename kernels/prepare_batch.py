"""Batch preparation for the data path: uint8 HWC images -> crop / flip / normalise -> float CHW batch."""
from __future__ import annotations

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
