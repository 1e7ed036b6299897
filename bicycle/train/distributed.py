"""Data-parallel training on PyTorch's own engine: torch.distributed + DDP, launched by torchrun.

``torchrun --nproc-per-node N -m bicycle train ...`` starts N processes; each reads its rank from
torchrun's environment (:func:`world_from_env`), joins the process group (gloo on CPU, NCCL on CUDA,
:func:`init`), trains on its shard of every global batch and wraps G, E, D, D2 in DDP (:func:`wrap`).
What a step computes is pinned in docs/torchrun.md and tests/test_distributed.py.

Host-side decisions (stop, divergence, a failed checkpoint) go through a gloo group on every device,
so deciding never synchronises a GPU stream.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from bicycle.errors import ConfigError
from bicycle.nets import Nets

DDP_GRAPH_WARMUP = 11  # eager DDP iterations before capture (PyTorch's CUDA-graph notes for DDP)
DDP_EAGER_NOTE = ("data parallel on CUDA: eager DDP steps (DDP inside a CUDA-graph-replayed iteration is opt-in with "
                  "--cuda-graphs; it has not been verified on a GPU yet)")
TIMEOUT_ENV = "BICYCLE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120  # a rank that stops answering fails its peers within this, not torch's 10-30 minutes
SETUP_TIMEOUT_S = 24 * 3600  # rank 0's start-up data check may take long on a big dataset


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size``, ``local_rank`` on its machine; ``launched``: started by
    torchrun (a world of size 1 then still takes the DDP path); ``restart``: torchrun's restart count."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False
    restart: int = 0
    run_id: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, ...), or :data:`SINGLE`."""
    env = dict(os.environ if env is None else env)
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return SINGLE
    try:
        rank, size, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"]))
        restart = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        raise ConfigError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers: {env.get('RANK')!r}, "
                          f"{env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r}") from None
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    return World(rank, size, local, True, restart, "" if run_id in ("none", "None") else run_id)


def timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


def device_for(world: World, requested: str) -> torch.device:
    """One device per process: cuda:LOCAL_RANK when CUDA is used, else the CPU."""
    from bicycle.ops import pick_device

    dev = pick_device(requested)
    if dev.type != "cuda" or not world.launched:
        return dev
    if dev.index is not None and world.size > 1:
        raise ConfigError(f"--device {requested} under torchrun: each rank takes cuda:LOCAL_RANK; give --device cuda or auto")
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"rank {world.rank} has LOCAL_RANK {world.local_rank}, but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", world.local_rank)


class Group:
    """The process group of a launched world and the collective decisions of the loop."""

    def __init__(self, world: World, device: torch.device, capture: bool = False) -> None:
        """``capture``: DDP will run inside a captured CUDA graph (NCCL's async error handling must be off)."""
        self.world, self.device = world, device
        if device.type == "cuda":
            torch.cuda.set_device(device)
            if capture:
                os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                # torchrun's agent keeps one store across restarts: without a prefix per attempt, a restarted
                # worker reads the dead attempt's addresses and cannot connect
                agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world.size,
                                      is_master=False, timeout=timeout())
                store = dist.PrefixStore(f"bicycle/attempt_{world.restart}", agent)
                dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, timeout=timeout())
            else:
                dist.init_process_group(backend, timeout=timeout())
        if dist.get_world_size() != world.size:
            raise ConfigError(f"the process group has {dist.get_world_size()} ranks, torchrun said {world.size}")
        self.host = dist.new_group(backend="gloo") if device.type == "cuda" else None  # host flags, CPU tensors

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank (a collective: every rank must call it)."""
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host)
        return bool(t.item())

    def max(self, value: int) -> int:
        """The largest of the ranks' integers (a collective)."""
        t = torch.tensor([int(value)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host)
        return int(t.item())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average over ranks of each value (same keys, same order on every rank)."""
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t, group=self.host)
        return {k: float(v) / self.world.size for k, v in zip(keys, t.tolist())}

    def gather_bytes(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's uint8 tensor (the same size on every rank), in rank order."""
        out = [torch.empty_like(t) for _ in range(self.world.size)]
        dist.all_gather(out, t, group=self.host)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.host)

    @contextlib.contextmanager
    def main_first(self, key: str) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. the data check, filling the verdict cache); the others wait for it
        (up to a day, not the step timeout), then run it. Rank 0 signals even when its block fails."""
        store = dist.distributed_c10d._get_default_store()
        done = f"bicycle/{key}"
        if self.world.main:
            try:
                yield
            finally:
                store.set(done, "1")
            return
        store.wait([done], datetime.timedelta(seconds=SETUP_TIMEOUT_S))
        yield

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(nets: Nets, device: torch.device, *, unused_in_encoder: bool, static_graph: bool = False) -> Nets:
    """DDP wrappers of every network (the step calls them; frozen uses go around them: see ``frozen``).
    ``unused_in_encoder``: models that read mu alone (no KL) leave E's logvar head without gradient."""
    from bicycle.nets import couples_samples

    def ddp(m: nn.Module | None, find_unused: bool = False) -> nn.Module | None:
        if m is None:
            return None
        if couples_samples(m):
            raise ConfigError("--norm batch under data parallelism would need SyncBatchNorm, which bicycle does not "
                              "use: train with --norm instance (the paper's) or in one process")
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(m, device_ids=ids, find_unused_parameters=find_unused,
                                                   static_graph=static_graph)

    return Nets(G=ddp(nets.G), D=ddp(nets.D), E=ddp(nets.E, unused_in_encoder), D2=ddp(nets.D2))  # type: ignore[arg-type]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` >= 1's noise (and dropout) stream, drawn after the networks' initialisation;
    rank 0 keeps the single-process stream."""
    return (seed * 1_000_003 + 7919 * rank) % (2**63 - 1)


def rank_rng_tensors(group: Group) -> dict[str, torch.Tensor]:
    """Every rank's RNG states for a checkpoint (a collective): ``rng.torch.rank<r>`` (and ``rng.cuda.rank<r>``)
    for ranks r >= 1; rank 0's are the checkpoint's ``rng.torch`` / ``rng.cuda``."""
    states = {"torch": torch.get_rng_state()}
    if group.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(group.device)
    out = {}
    for kind, mine in states.items():
        for r, t in enumerate(group.gather_bytes(mine)):
            if r > 0:
                out[f"rng.{kind}.rank{r}"] = t
    return out


def restore_rank_rng(ckpt, world: World, seed: int) -> str | None:
    """After the checkpoint's own RNG states (rank 0's) were loaded: this rank's streams. A checkpoint of
    another world size continues with fresh streams for the ranks it lacks; returns the note to show."""
    saved = int(ckpt.metadata.get("world_size", "1"))
    if world.rank > 0:
        key = f"rng.torch.rank{world.rank}"
        if key in ckpt.tensors:
            torch.set_rng_state(ckpt.tensors[key])
            cuda = f"rng.cuda.rank{world.rank}"
            if cuda in ckpt.tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(ckpt.tensors[cuda], world.local_rank)
        else:
            torch.manual_seed(rank_seed(seed + 1_000_000 * ckpt.step, world.rank))
    if saved == world.size:
        return None
    return (f"note: this run was trained on {saved} rank(s) and resumes on {world.size}: the global batch becomes "
            f"{world.size} x the per-rank batch, the data order continues from step {ckpt.step} at that batch, and "
            f"ranks without saved noise streams start fresh ones; the result differs from an uninterrupted run")
