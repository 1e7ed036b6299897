"""CUDA-graph capture of the whole training iteration, and the execution options around it.

:class:`GraphedStep` owns static input buffers (``a``, ``b``), keeps each optimizer's learning rate
as a device tensor (capturable Adam reads it inside the graph; :meth:`GraphedStep.set_lr_factor`
refills it outside the graph before each replay, so the schedule is honoured under replay), runs a
few eager warm-up iterations on a side stream (as PyTorch's whole-network capture recipe), then
captures :func:`bicycle.train.step.train_step` once with ``torch.cuda.graph`` and replays it.

Noise: by default eps and z are drawn INSIDE the graph with ``torch.randn`` on the device's default
generator; the graph registers that generator, so each replay advances the Philox offset and the
noise (and the dropout masks) differ between replays. ``noise="static"`` reads eps/z from static
buffers instead (filled with :meth:`GraphedStep.set_noise`), for tests that inject fixed noise.

The returned metrics are the graph's static outputs (0-dim device tensors): they hold the losses
of the latest replay and are read on the host only when logged.

With ``capture=False`` (CPU, or ``--no-cuda-graphs``) the same object runs the same body eagerly,
with torch's float learning rates: the training loop has this one step path on every device, and
the CPU tests exercise its buffers and noise plumbing.
Nothing here changes the mathematics of ``train_step``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bicycle.errors import ConfigError
from bicycle.models import draw_noise
from bicycle.train.execution import autocast, memory_format
from bicycle.train.state import TrainState
from bicycle.train.step import train_step

DEFAULT_WARMUP = 3
CAPTURE_ERROR_MODE = "thread_local"


def capturing(graph: torch.cuda.CUDAGraph, **kwargs: object):
    """``torch.cuda.graph(graph)`` as every capture in bicycle runs it: in ``thread_local`` error mode.

    In the default ``global`` mode a CUDA call from ANY thread during the capture (the prefetch thread's
    ``pin_memory``, whose host allocator queries events) invalidates it; ``thread_local`` checks only the
    capturing thread, and the prefetch thread never touches the capturing stream.
    """
    return torch.cuda.graph(graph, capture_error_mode=CAPTURE_ERROR_MODE, **kwargs)


# -- learning rates as device tensors ------------------------------------------------------------

def lr_tensors(optimizers: dict[str, torch.optim.Optimizer], device: torch.device | str) -> dict[str, list[Tensor]]:
    """Replace every param group's float lr with a 0-dim float32 tensor on ``device`` (once); return them.

    Capturable Adam accepts a Tensor lr and reads it on the device, so a graph captured with these
    tensors follows whatever :func:`set_lr` writes into them before a replay.
    """
    out: dict[str, list[Tensor]] = {}
    for name, opt in optimizers.items():
        tensors = []
        for group in opt.param_groups:
            lr = group["lr"]
            if not isinstance(lr, Tensor):
                lr = torch.tensor(float(lr), dtype=torch.float32, device=device)
                group["lr"] = lr
            tensors.append(lr)
        out[name] = tensors
    return out


def set_lr(tensors: dict[str, list[Tensor]], base_lrs: dict[str, float], factor: float) -> None:
    """lr = base * factor, written in place (outside any graph: ``fill_`` with a host scalar)."""
    for name, ts in tensors.items():
        for t in ts:
            t.fill_(base_lrs[name] * factor)


# -- the graphed step ----------------------------------------------------------------------------

class GraphedStep:
    """One training iteration, captured once and replayed. See the module docstring.

    ``step(a, b)`` copies the batch into the static buffers, then: during the first ``warmup`` calls
    runs ``train_step`` eagerly (on a side stream on CUDA: this also creates the optimizer state),
    on the next call captures it and replays; afterwards only replays. Every call is one real
    training iteration. Returns the metrics (static device tensors once captured).
    """

    def __init__(self, state: TrainState, a_shape: tuple[int, ...], b_shape: tuple[int, ...], nz: int,
                 device: torch.device | str, base_lrs: dict[str, float] | None = None, *, warmup: int = DEFAULT_WARMUP,
                 precision: str = "fp32", noise: str = "graph", capture: bool | None = None) -> None:
        self.state = state
        self.device = torch.device(device)
        if capture is None:
            capture = self.device.type == "cuda"
        if capture and self.device.type != "cuda":
            raise ConfigError(f"CUDA graphs need a CUDA device, got {self.device.type!r}")
        if noise not in ("graph", "static"):
            raise ValueError(f"noise must be 'graph' or 'static', got {noise!r}")
        if warmup < 1:
            raise ValueError("warmup must be at least 1 (the optimizer state must exist before capture)")
        self.capture, self.warmup, self.precision, self.noise_mode = capture, warmup, precision, noise
        self.batch_size, self.nz = a_shape[0], nz
        fmt = memory_format(precision)
        self.a = torch.zeros(a_shape, device=self.device).contiguous(memory_format=fmt)
        self.b = torch.zeros(b_shape, device=self.device).contiguous(memory_format=fmt)
        self.static_noise = {k: torch.zeros(n, nz, device=self.device)
                             for k, n in state.model.noise_rows(self.batch_size).items()}
        self.base_lrs = dict(state.base_lrs if base_lrs is None else base_lrs)
        # capturable Adam reads device lrs inside the graph; eager steps keep torch's float lrs
        self.lrs = lr_tensors(state.optimizers, self.device) if capture else None
        self.graph = None  # torch.cuda.CUDAGraph once captured
        self.calls = 0
        self.metrics: dict[str, Tensor] | None = None
        self.noise: dict[str, Tensor] = {}  # the noise of the latest call (static outputs once captured)
        self._side = torch.cuda.Stream(self.device) if capture else None  # warm-up off the capture stream

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def set_lr_factor(self, factor: float) -> None:
        """lr = base * factor for every optimizer, before the next call (outside any graph)."""
        if self.lrs is not None:
            set_lr(self.lrs, self.base_lrs, factor)
            return
        for name, opt in self.state.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.base_lrs[name] * factor

    def set_kl_factor(self, factor: float) -> None:
        """lambda_KL's warm-up multiplier for the next call (a no-op without a warm-up tensor)."""
        scale = self.state.loss_setup.kl_scale
        if scale is not None:  # outside any graph: fill_ with a host scalar
            scale.fill_(factor)

    def set_ema_step(self, step: int) -> None:
        """The moving averages' weight for the update after 0-based ``step`` (a no-op without ``train.ema``)."""
        if self.state.ema is not None:  # outside any graph, as the factors above
            self.state.ema.set_step(step)

    def load(self, a: Tensor, b: Tensor) -> None:
        """Copy one batch into the static buffers (asynchronously from pinned memory); uint8 batches
        (see :meth:`load_uint8`) are normalised on the device."""
        if a.shape != self.a.shape or b.shape != self.b.shape:
            raise ValueError(f"batch shapes {tuple(a.shape)}, {tuple(b.shape)} differ from the captured "
                             f"{tuple(self.a.shape)}, {tuple(self.b.shape)} (the batch size must stay fixed)")
        if a.dtype == torch.uint8:
            self.load_uint8(a, b)
            return
        self.a.copy_(a, non_blocking=True)
        self.b.copy_(b, non_blocking=True)

    def load_uint8(self, a: Tensor, b: Tensor) -> None:
        """uint8 [N, C, S, S] images in [0, 255] -> static float buffers in [-1, 1] as ``x / 127.5 - 1`` (the
        data path's own formula, so the values equal the float batch's), converted on the device: a
        quarter of the bytes over the host link."""
        for src, dst in ((a, self.a), (b, self.b)):
            dst.copy_(src.to(self.device, non_blocking=True)).div_(127.5).sub_(1.0)

    def set_noise(self, noise: dict[str, Tensor]) -> None:
        """Static-noise mode only: copy eps/z into the buffers the graph reads."""
        if self.noise_mode != "static":
            raise RuntimeError("set_noise needs GraphedStep(..., noise='static')")
        for k, buf in self.static_noise.items():
            buf.copy_(noise[k], non_blocking=True)

    def _body(self) -> dict[str, Tensor]:
        if self.noise_mode == "static":
            noise = self.static_noise
        else:
            noise = draw_noise(self.state.model, self.batch_size, self.nz, self.device)
        self.noise = noise
        with autocast(self.device, self.precision):
            return train_step(self.state, self.a, self.b, noise)

    def _eager(self) -> dict[str, Tensor]:
        if self._side is None:
            return self._body()
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            metrics = self._body()
        torch.cuda.current_stream(self.device).wait_stream(self._side)
        return metrics

    def _capture(self) -> None:
        for opt in self.state.optimizers.values():
            opt.zero_grad(set_to_none=True)  # grads are then allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        with capturing(graph):
            self.metrics = self._body()
        self.graph = graph

    def step(self, a: Tensor | None = None, b: Tensor | None = None) -> dict[str, Tensor]:
        if a is not None and b is not None:
            self.load(a, b)
        self.calls += 1
        if self.graph is None:
            if not self.capture or self.calls <= self.warmup:
                self.metrics = self._eager()
                return self.metrics
            self._capture()  # capture records the work without running it: replay once below
        assert self.graph is not None
        self.graph.replay()
        assert self.metrics is not None
        return self.metrics

    def replay(self) -> dict[str, Tensor]:
        """Replay the captured iteration on the current buffers (after capture)."""
        if self.graph is None:
            raise RuntimeError("not captured yet")
        self.graph.replay()
        assert self.metrics is not None
        return self.metrics
