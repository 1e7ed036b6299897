"""Error types. Every user-facing error names the thing that is wrong."""


class BicycleError(Exception):
    """Base class for errors bicycle reports to the user as one clear line."""


class ConfigError(BicycleError, ValueError):
    """An invalid configuration value or combination; the CLI reports it as a usage error."""


class DataError(BicycleError):
    """A dataset that cannot be used: missing or empty folder, unreadable image, wrong layout."""


class PluginError(BicycleError):
    """A plugin problem: duplicate name, unknown component, failing import or hook."""


class CheckpointError(BicycleError):
    """A checkpoint that cannot be loaded: missing/unexpected tensors, config mismatch, bad file."""


class OpUnavailableError(BicycleError, RuntimeError):
    """An explicitly requested op implementation (``--impl triton``/``cpp``) cannot run here; says why.

    Also a RuntimeError, as it was before it joined this hierarchy, so ``except RuntimeError`` still catches it.
    """
