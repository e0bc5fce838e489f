"""Plain-text tables for ``sweep launch --dry-run`` and ``sweep status`` (pure functions)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tabulate import tabulate

from hpcdd.sweep.grid import Sweep, SweepCell, point_values
from hpcdd.sweep.state import DONE, STATES, TaskState, cell_task

MAX_CELL = 60
"""Long cells (log lines, errors) are cut to this many characters."""


def _cut(text: str, width: int = MAX_CELL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _strip_stamp(line: str) -> str:
    """log.txt lines start with a UTC stamp; the table shows the message."""
    head, _, rest = line.partition(" ")
    return rest if head.endswith("Z") and head[:4].isdigit() else line


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, missingval="null")


def _axes_cells(sweep: Sweep, cell: SweepCell) -> list[Any]:
    values = point_values(cell, sweep.axes)
    return [values[a] for a in sweep.axes]


def _state_text(s: TaskState) -> str:
    return s.state if not s.detail or s.state == DONE else f"{s.state} ({_cut(s.detail, 30)})"


def _cell_state(sweep: Sweep, cell: SweepCell, states: dict[str, TaskState]) -> TaskState:
    run = states[f"run:{cell.run_id}"]
    if sweep.separate_evals and run.state != DONE:
        own = states[cell_task(sweep, cell.run_id, cell.eval_id)]
        return own if own.state == DONE else run
    return states[cell_task(sweep, cell.run_id, cell.eval_id)]


def plan_table(sweep: Sweep, states: dict[str, TaskState], actions: dict[str, str]) -> str:
    """One row per task: prerequisites, then the distillations (with their varying fields), then
    separate evaluations; state and action."""
    axes_of = {}
    for cell in sweep.cells:
        axes_of.setdefault(cell.run_id, _axes_cells(sweep, cell))
    headers = ["task", "id", *sweep.axes, "state", "action"]
    rows = []
    for key, action in actions.items():
        stage, _, ident = key.partition(":")
        run_id = ident.split("/")[0]
        axes = axes_of.get(run_id, [""] * len(sweep.axes)) if stage != "prereq" else [""] * len(sweep.axes)
        rows.append([stage, ident, *axes, states[key].state, action])
    return _table(rows, headers)


def status_table(sweep: Sweep, states: dict[str, TaskState]) -> str:
    """Prerequisites, then one row per (run, evaluation) cell: ids, varying fields, state, job,
    progress of running tasks, last log line, error."""
    headers = ["task", "id", *sweep.axes, "state", "job", "progress", "last log line", "error"]
    rows = []
    for p in sweep.prereqs:
        s = states[f"prereq:{p.key}"]
        rows.append(["prereq", p.key, *[""] * len(sweep.axes), _state_text(s), s.job_id or "-",
                     s.progress, _cut(_strip_stamp(s.last_log)) or "-", _cut(s.error)])
    for cell in sweep.cells:
        s = _cell_state(sweep, cell, states)
        rows.append(["run", f"{cell.run_id}/{cell.eval_id}", *_axes_cells(sweep, cell), _state_text(s),
                     s.job_id or "-", s.progress, _cut(_strip_stamp(s.last_log)) or "-", _cut(s.error)])
    return _table(rows, headers)


def state_counts(states: dict[Any, TaskState], what: str = "") -> str:
    """'3 done, 1 running, ...' in a fixed order, zero counts left out."""
    counts = Counter(s.state for s in states.values())
    text = ", ".join(f"{counts[k]} {k}" for k in STATES if counts[k])
    return text or "nothing"


def cell_state_map(sweep: Sweep, states: dict[str, TaskState]) -> dict[tuple[str, str], TaskState]:
    return {(c.run_id, c.eval_id): _cell_state(sweep, c, states) for c in sweep.cells}


__all__ = ["plan_table", "status_table", "state_counts", "cell_state_map"]
