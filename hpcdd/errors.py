"""User-facing errors. The CLI turns any ``HpcddError`` into one line and exit code 2."""

import reprlib

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxtuple, _BRIEF.maxdict = 3, 6, 6, 6
_BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 60, 60, 40
BRIEF_CHARS = 120
"""Most characters :func:`brief` shows of a value."""


def brief(value: object) -> str:
    """``repr(value)`` cut short for an error message: a few items per level, a few levels, at
    most :data:`BRIEF_CHARS` characters, whatever the value's size (a YAML alias bomb's repr
    would grow until memory runs out)."""
    text = _BRIEF.repr(value)
    return text if len(text) <= BRIEF_CHARS else text[: BRIEF_CHARS - 3] + "..."


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
