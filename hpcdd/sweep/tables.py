"""Plain-text tables for ``sweep launch --dry-run`` and ``sweep status`` (pure functions)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import tabulate as _tabulate
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
    """``tabulate(rows, headers, tablefmt="simple", disable_numparse=True, missingval="null")``.

    Plain tables (printable text, ints, floats, bools and None in rows of the headers' length)
    are laid out here, as tabulate lays them out under these options: every column left-aligned,
    at least two wider than its header, cells stripped, ``str(value)``, None as ``null``, columns
    joined by two spaces, lines right-stripped. Anything else goes to tabulate: this is only
    tabulate's per-cell type inference skipped for a 10,000-row status table.
    """
    text = _plain_table(rows, headers)
    if text is not None:
        return text
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, missingval="null")


_PLAIN = frozenset({int, float, bool})


def _plain_table(rows: list[list[Any]], headers: list[str]) -> str | None:
    """The table of :func:`_table`, or ``None`` where tabulate could lay it out otherwise
    (control or wide characters, line breaks, ANSI codes, other types, ragged rows)."""
    ascii_only = _tabulate.wcwidth is not None and _tabulate.WIDE_CHARS_MODE  # widths by wcwidth
    n = len(headers)
    if not rows or not all(type(h) is str and h.isprintable() and (h.isascii() or not ascii_only)
                           for h in headers):
        return None
    cols: list[list[str]] = [[] for _ in range(n)]
    for row in rows:
        if type(row) is not list or len(row) != n:
            return None
        for col, value in zip(cols, row):
            kind = type(value)
            if kind is str:
                if not value.isprintable() or (ascii_only and not value.isascii()):
                    return None
                col.append(value.strip())
            elif value is None:
                col.append("null")
            elif kind in _PLAIN:
                col.append(f"{value}")
            else:
                return None
    widths = [max(len(h) + _tabulate.MIN_PADDING, max(map(len, col))) for h, col in zip(headers, cols)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths).rstrip()]
    padded = [[text.ljust(w) for text in col] for col, w in zip(cols, widths)]
    lines += ["  ".join(cells).rstrip() for cells in zip(*padded)]
    return "\n".join(lines)


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
