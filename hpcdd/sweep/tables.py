"""Plain-text tables for ``sweep launch --dry-run`` and ``sweep status`` (pure functions)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tabulate import tabulate

from hpcdd.sweep.grid import Sweep, point_values
from hpcdd.sweep.state import STATES, RunState

MAX_CELL = 60
"""Long cells (log lines, errors) are cut to this many characters."""


def _cut(text: str, width: int = MAX_CELL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _strip_stamp(line: str) -> str:
    """log.txt lines start with a UTC stamp; the table shows the message."""
    head, _, rest = line.partition(" ")
    return rest if head.endswith("Z") and head[:4].isdigit() else line


def _axes_cells(sweep: Sweep, run) -> list[Any]:
    values = point_values(run, sweep.axes)
    return [values[a] for a in sweep.axes]


def plan_table(sweep: Sweep, states: dict[str, RunState], actions: dict[str, str]) -> str:
    """One row per run: id, the varying fields, state, action."""
    headers = ["run_id", *sweep.axes, "state", "action"]
    rows = [[r.run_id, *_axes_cells(sweep, r), states[r.run_id].state, actions[r.run_id]] for r in sweep.runs]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, missingval="null")


def status_table(sweep: Sweep, states: dict[str, RunState]) -> str:
    """One row per run: id, varying fields, state, job id, last log line, error."""
    headers = ["run_id", *sweep.axes, "state", "job", "last log line", "error"]
    rows = []
    for r in sweep.runs:
        s = states[r.run_id]
        state = s.state if not s.detail or s.state == "done" else f"{s.state} ({_cut(s.detail, 30)})"
        rows.append([r.run_id, *_axes_cells(sweep, r), state, s.job_id or "-",
                     _cut(_strip_stamp(s.last_log)) or "-", _cut(s.error) or ""])
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, missingval="null")


def state_counts(states: dict[str, RunState]) -> str:
    """'3 done, 1 running, ...' in a fixed order, zero counts left out."""
    counts = Counter(s.state for s in states.values())
    return ", ".join(f"{counts[k]} {k}" for k in STATES if counts[k]) or "no runs"


__all__ = ["plan_table", "status_table", "state_counts"]
