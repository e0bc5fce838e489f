"""Progress of a long loop: a tqdm bar on a terminal, a plain line every so often otherwise.

A bar redraws itself with carriage returns many times a second; written to a file (a Slurm
``.err`` log that ``sweep logs`` shows, a CI log) those frames pile up into unreadable lines. So
:func:`progress` draws a bar only when stderr is a terminal, and otherwise prints one line such as
``dm 1a2b3c4d5e6f: 40/200 (20%), 61 s, ~244 s left, loss=0.812`` every ``every`` seconds and when
the loop ends. Torch-free.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterator, TextIO

LINE_EVERY_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""


class _Lines:
    """The non-terminal form of :func:`progress`: iterates ``range(start, total)`` and prints a line
    at most every ``every`` seconds (after the first step at once) and one when the loop ends."""

    def __init__(self, start: int, total: int, desc: str, every: float, stream: TextIO) -> None:
        self.start, self.total, self.desc, self.every, self.stream = start, total, desc, every, stream
        self.done = start
        self.postfix = ""
        self.t0 = time.monotonic()
        self.last: float | None = None

    def __iter__(self) -> Iterator[int]:
        for it in range(self.start, self.total):
            yield it
            self.done = it + 1
            now = time.monotonic()
            if self.last is None or now - self.last >= self.every or self.done == self.total:
                self._print(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _print(self, now: float) -> None:
        elapsed = now - self.t0
        text = f"{self.desc}: {self.done}/{self.total}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {elapsed:.0f} s"
        steps = self.done - self.start
        if 0 < steps and self.done < self.total:
            text += f", ~{elapsed / steps * (self.total - self.done):.0f} s left"
        if self.postfix:
            text += f", {self.postfix}"
        print(text, file=self.stream, flush=True)
        self.last = now

    def close(self) -> None:
        """Nothing to clean up (tqdm's bars have ``close``)."""


class _Quiet:
    """Progress switched off: the plain range."""

    def __init__(self, start: int, total: int) -> None:
        self.range = range(start, total)

    def __iter__(self) -> Iterator[int]:
        return iter(self.range)

    def set_postfix(self, **values: Any) -> None:
        """Nothing shown."""

    def close(self) -> None:
        """Nothing to clean up."""


def progress(start: int, total: int, *, desc: str = "", enabled: bool = True, leave: bool = True,
             every: float = LINE_EVERY_S, stream: TextIO | None = None) -> Any:
    """An iterable over ``range(start, total)`` that shows how far it got on ``stream`` (stderr):
    a tqdm bar on a terminal, else a line every ``every`` seconds (see the module docstring).
    The result has ``set_postfix(**values)`` (shown after the counts) and ``close()``."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Quiet(start, total)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm

        return tqdm(range(start, total), desc=desc, initial=start, total=total, leave=leave, file=stream)
    return _Lines(start, total, desc, every, stream)


__all__ = ["progress", "LINE_EVERY_S"]
