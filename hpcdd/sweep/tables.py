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


def status_records(sweep: Sweep, states: dict[str, TaskState], only: str | None = None) -> list[dict[str, Any]]:
    """One record per prerequisite and per (run, evaluation) cell, in table order (``only``: just
    those in that state): task, id, the varying fields, state, detail, job, progress, last log
    line, error. What ``sweep status --json`` prints and :func:`status_table` shows."""
    out = []
    for p in sweep.prereqs:
        s = states[f"prereq:{p.key}"]
        if only is None or s.state == only:
            out.append(_record("prereq", p.key, dict.fromkeys(sweep.axes), s))
    for cell in sweep.cells:
        s = _cell_state(sweep, cell, states)
        if only is None or s.state == only:
            out.append(_record("run", f"{cell.run_id}/{cell.eval_id}", point_values(cell, sweep.axes), s))
    return out


def _record(task: str, ident: str, point: dict[str, Any], s: TaskState) -> dict[str, Any]:
    return {"task": task, "id": ident, "point": point, "state": s.state, "detail": s.detail,
            "job": s.job_id, "progress": s.progress, "last_log": _strip_stamp(s.last_log), "error": s.error}


def status_table(sweep: Sweep, states: dict[str, TaskState], only: str | None = None) -> str:
    """Prerequisites, then one row per (run, evaluation) cell: ids, varying fields, state, job,
    progress of running tasks, last log line, error (``only``: the rows in that state)."""
    headers = ["task", "id", *sweep.axes, "state", "job", "progress", "last log line", "error"]
    rows = []
    for r in status_records(sweep, states, only):
        shown = r["state"] if not r["detail"] or r["state"] == DONE else f"{r['state']} ({_cut(r['detail'], 30)})"
        rows.append([r["task"], r["id"], *(("" if v is None else v) if r["task"] == "prereq" else v
                                          for v in r["point"].values()),
                     shown, r["job"] or "-", r["progress"], _cut(r["last_log"]) or "-", _cut(r["error"])])
    return _table(rows, headers)


def state_counts(states: dict[Any, TaskState], what: str = "") -> str:
    """'3 done, 1 running, ...' in a fixed order, zero counts left out."""
    counts = Counter(s.state for s in states.values())
    text = ", ".join(f"{counts[k]} {k}" for k in STATES if counts[k])
    return text or "nothing"


def cell_state_map(sweep: Sweep, states: dict[str, TaskState]) -> dict[tuple[str, str], TaskState]:
    return {(c.run_id, c.eval_id): _cell_state(sweep, c, states) for c in sweep.cells}


__all__ = ["plan_table", "status_table", "status_records", "state_counts", "cell_state_map"]
