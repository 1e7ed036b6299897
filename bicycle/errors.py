"""Error types. Every user-facing error names the thing that is wrong; the CLI prints it as one line
and exits with the class's ``exit_code`` (the table in docs/reliability.md)."""

# Exit codes besides the errors' own: a run stopped by Ctrl-C (SIGINT) or SIGTERM, as shells report them.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class BicycleError(Exception):
    """Base class for errors bicycle reports to the user as one clear line. ``reported``: the line was already
    printed (a verdict every torchrun rank reached, printed by rank 0 alone): the CLI only exits with the code."""

    exit_code = 1
    reported = False


class ConfigError(BicycleError, ValueError):
    """An invalid configuration value or combination; the CLI reports it as a usage error."""

    exit_code = 2


class DataError(BicycleError):
    """A dataset that cannot be used: missing or empty folder, unreadable image, wrong layout."""

    exit_code = 3


class MissingSplitError(DataError):
    """A dataset without the split asked for (e.g. a folder with ``train/`` but no ``val/``): the one
    DataError after which evaluation falls back to the train split. ``root`` names the dataset."""

    def __init__(self, message: str, root: str = "") -> None:
        super().__init__(message)
        self.root = root


class CheckpointError(BicycleError):
    """A checkpoint that cannot be loaded: missing/unexpected tensors, config mismatch, bad file."""

    exit_code = 4


class NonFiniteError(CheckpointError):
    """Weights or optimizer state holding NaN or inf: refused when written and when loaded."""


class PluginError(BicycleError):
    """A plugin problem: duplicate name, unknown component, failing import or hook."""

    exit_code = 5


class TrainingDiverged(BicycleError):
    """A training run whose losses became non-finite: stopped, no checkpoint written after it."""

    exit_code = 6


class OpUnavailableError(BicycleError, RuntimeError):
    """An explicitly requested op implementation (``--impl triton``/``cpp``) cannot run here; says why.

    Also a RuntimeError, as it was before it joined this hierarchy, so ``except RuntimeError`` still catches it.
    """

    exit_code = 7


class StorageError(BicycleError):
    """A run dir or output path that cannot be written: permission, read-only, disk full."""

    exit_code = 8


class ExportError(BicycleError):
    """A model that cannot be exported or converted: an unexportable plugin network, an ONNX check that
    failed, weights of another implementation that do not map onto a bicycle model."""

    exit_code = 9


class PeerLost(BicycleError):
    """Data-parallel training: another rank failed, was killed or stopped answering; this rank stops too
    (torchrun then restarts the workers, with ``--max-restarts``, or ends the job)."""

    exit_code = 10


class RunDirBusy(BicycleError):
    """A run dir that another process is writing (``bicycle train`` or ``--resume`` holds its lock): one writer
    per run dir. Readers (``sample``, ``eval``, ``export``, ``bicycle.load``) never need the lock."""

    exit_code = 11


class InputTypeError(DataError, TypeError):
    """The Python API was given an input of a type it does not take (an int where an image goes); also a
    TypeError, as it was before it joined this hierarchy."""
