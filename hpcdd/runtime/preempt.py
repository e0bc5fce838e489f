"""Preemption: a signal handler that only sets a flag; the loop checkpoints at the next step.

Saving inside a signal handler can hang (the interrupted code may hold locks or be halfway
through an update), so ``StopFlag`` records the signal and returns. ``run_one`` polls the
flag through its ``should_stop`` hook at every step boundary, writes an atomic checkpoint and
raises ``Interrupted``. Previous handlers are restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

DEFAULT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
"""USR2: Slurm's --signal / scancel --signal (USR1 may be swallowed by NCCL). TERM: the kill
that a requeue or preemption sends before SIGKILL, KillWait seconds later."""

EXIT_INTERRUPTED = 3
"""Exit code of ``hpcdd run``/``distill`` after a checkpoint-and-stop: resumable, not done."""


class Interrupted(Exception):
    """Raised at a safe point after ``should_stop()`` asked for it. ``it`` is the number of
    completed distillation iterations saved in the checkpoint (``None``: during evaluation,
    which resumes at its next unfinished model)."""

    def __init__(self, it: int | None) -> None:
        where = f"after iteration {it}; checkpoint written" if it is not None else \
            "during evaluation; its finished models are kept"
        super().__init__(f"stopped {where}")
        self.it = it


class StopFlag:
    """``with StopFlag() as stop: run_one(..., should_stop=stop)``."""

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def __call__(self) -> bool:
        return self.received is not None

    def forward(self, frame: FrameType | None = None) -> bool:
        """Call the handler that was installed before ours for the received signal (e.g.
        submitit's checkpoint-and-requeue) now that it is safe; False if there is none."""
        handler = self._previous.get(self.received) if self.received is not None else None
        if callable(handler):
            handler(int(self.received), frame)
            return True
        return False

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():  # signals live in the main thread
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
