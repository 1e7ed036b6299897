"""The collective decisions of the training loop behind one interface (:class:`Coordinator`): :class:`Alone`
decides for one process, :class:`Ranks` for the ranks of a torchrun job (every rank takes the same decision, through
:class:`~bicycle.train.distributed.Group`)."""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from bicycle.ops import pick_device
from bicycle.config import RunConfig
from bicycle.errors import BicycleError, NonFiniteError, PeerLost, TrainingDiverged
from bicycle.train.distributed import (DDP_EAGER_NOTE, DDP_GRAPH_WARMUP, SINGLE, Group, World, device_for,
                                      rank_rng_tensors)
from bicycle.train.execution import use_cuda_graphs
from bicycle.train.graph import DEFAULT_WARMUP

Echo = Callable[[str], None]


class Coordinator(Protocol):
    """What the loop asks of the ranks; with several ranks each call is a collective every rank makes."""

    world: World

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        ...

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average over ranks of each value (same keys on every rank)."""
        ...

    def barrier(self) -> None:
        """Every rank waits for the others."""
        ...

    def main_first(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Rank 0 runs the block first (e.g. the data check); the others after it."""
        ...

    def agree(self, failure: BaseException | None, step: int) -> BaseException | None:
        """The checkpoint agreement: rank 0's failure to write the checkpoint of ``step`` (None: written), on every
        rank."""
        ...

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        """The RNG states of the other ranks, for rank 0's checkpoint."""
        ...

    def device_for(self, requested: str) -> torch.device:
        """This process's device for ``--device requested``."""
        ...

    def execution(self, setting: bool | None, device: torch.device) -> tuple[bool, str | None, object, int]:
        """(capture the step in a CUDA graph?, a note to show or None, DDP's side stream or None, eager warm-up
        steps) for ``--cuda-graphs`` ``setting`` on ``device``."""
        ...

    def speaker(self, echo: Echo) -> Echo:
        """``echo`` for rank 0, silence for the others: rank 0 speaks for the job."""
        ...

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Around a whole run: one verdict for the job, resources released at the end."""
        ...


class Alone:
    """One process: every decision is its own."""

    world = SINGLE

    def any(self, flag: bool) -> bool:
        return flag

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def barrier(self) -> None:
        pass

    def main_first(self, key: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def agree(self, failure: BaseException | None, step: int) -> BaseException | None:
        return failure

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def device_for(self, requested: str) -> torch.device:
        return pick_device(requested)

    def execution(self, setting: bool | None, device: torch.device) -> tuple[bool, str | None, object, int]:
        graphs, note = use_cuda_graphs(setting, device)
        return graphs, note, None, DEFAULT_WARMUP

    def speaker(self, echo: Echo) -> Echo:
        return echo

    def session(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class Ranks:
    """The ranks of a torchrun job, deciding together through ``group``."""

    def __init__(self, group: Group) -> None:
        self.group, self.world = group, group.world

    def any(self, flag: bool) -> bool:
        return self.group.any(flag)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        return self.group.mean(values)

    def barrier(self) -> None:
        self.group.barrier()

    def main_first(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self.group.main_first(key)

    def agree(self, failure: BaseException | None, step: int) -> BaseException | None:
        """0: written, 1: non-finite weights (a divergence on every rank), 2: another failure (the others stop)."""
        code = self.group.max(0 if failure is None else 1 if isinstance(failure, NonFiniteError) else 2)
        if failure is None and code == 1:
            return NonFiniteError(f"weights of step {step} (rank 0 refused to write them)")
        if failure is None and code == 2:
            return PeerLost(f"rank {self.world.rank}: rank 0 could not write the checkpoint of step {step} (see its "
                            f"output)")
        return failure

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        return rank_rng_tensors(self.group)

    def device_for(self, requested: str) -> torch.device:
        return self.group.device

    def execution(self, setting: bool | None, device: torch.device) -> tuple[bool, str | None, object, int]:
        """Asked-for CUDA graphs put DDP inside the captured iteration, as PyTorch documents it; by default DDP
        steps eagerly on CUDA."""
        graphs, note = use_cuda_graphs(setting, device)
        if graphs and setting:
            return True, note, torch.cuda.Stream(device), DDP_GRAPH_WARMUP
        if graphs:
            return False, DDP_EAGER_NOTE, None, DEFAULT_WARMUP
        return False, note, None, DEFAULT_WARMUP

    def speaker(self, echo: Echo) -> Echo:
        return echo if self.world.main else _quiet

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        try:
            yield
        except TrainingDiverged as exc:  # every rank decided it at the same step: one verdict, printed by rank 0
            if self.world.main:
                announce(exc)
            exc.reported = True
            with contextlib.suppress(RuntimeError):
                self.group.barrier()  # nobody exits (and makes torchrun stop the others) before rank 0 has printed
            raise
        except RuntimeError as exc:  # a collective failed: a peer died or timed out (torchrun restarts or ends the job)
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise PeerLost(f"rank {self.world.rank}: lost the other ranks ({last[:300]})") from exc
        finally:
            self.group.close()


def coordinator_for(world: World, cfg: RunConfig) -> Coordinator:
    """:class:`Alone` for a process torchrun did not start, else the ranks of its process group (joined here)."""
    if not world.launched:
        return Alone()
    return Ranks(Group(world, device_for(world, cfg.train.device), capture=cfg.train.cuda_graphs is True))


def announce(exc: BicycleError) -> None:
    """Print ``exc`` now, as the CLI would, and mark it reported (rank 0's verdict, printed before any rank exits)."""
    print(f"Error: {exc}", file=sys.stderr, flush=True)
    exc.reported = True


def _quiet(line: str) -> None:
    """Ranks other than 0 print nothing."""
