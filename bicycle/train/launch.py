"""``bicycle train --nproc N``: the same job as ``torchrun --standalone --nproc-per-node N -m bicycle train ...``,
started through torchrun's Python API (torch.distributed.run)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from bicycle.errors import BicycleError, ConfigError


def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str], run_dir: Path | None, preset: str, dry_run: bool) -> None:
    """Run ``bicycle train`` (``argv``: its arguments after ``train``, ``--nproc`` dropped) on ``nproc`` local
    ranks. A run dir is chosen here when none is given, so every rank and the user see the same one."""
    from bicycle.train.distributed import world_from_env

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if world_from_env().launched:
        raise ConfigError("--nproc inside a torchrun job: torchrun already started the ranks; drop --nproc")
    args = _without_nproc(argv)
    if args and args[0] == "train":
        args = args[1:]
    if run_dir is None and "--resume" not in args and not dry_run:
        args += ["--run-dir", str(Path("runs") / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")]
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "bicycle", "train", *args]))
    except ChildFailedError as exc:
        # torchrun stops the other ranks when one exits: a rank's own exit code beats a signal it was sent
        rank, failure = min(exc.failures.items(), key=lambda kv: (not 0 < kv[1].exitcode < 256, kv[0]))
        err = BicycleError(f"bicycle train --nproc {nproc}: rank {rank} exited with code {failure.exitcode} "
                           f"(its message is above)")
        err.exit_code = failure.exitcode if 0 < failure.exitcode < 256 else 1
        raise err from None
