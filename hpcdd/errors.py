"""User-facing errors. The CLI turns any ``HpcddError`` into one line and exit code 2."""


class HpcddError(Exception):
    """Base class for problems caused by the user's input or environment (not bugs)."""


class ConfigError(HpcddError):
    """A config, grid or command-line value is invalid."""


class DataError(HpcddError):
    """A dataset is missing or unreadable."""


class CheckpointError(HpcddError):
    """A checkpoint or run-dir file is corrupt or incompatible."""


class RunDirError(HpcddError):
    """A run dir cannot be used (unwritable, or holds a different run)."""


class NonFiniteLossError(HpcddError):
    """Distillation produced a NaN/Inf loss; the last good checkpoint is kept."""
