"""Collect finished evaluations into one tidy table: one row per (run, evaluation), one column
per field.

A run dir (named by its 12-hex run id, marked by ``run.json``; layout in :mod:`hpcdd.rundir`)
holds its distillation's files and one ``eval/<eval_id>/`` dir per evaluation, each with its own
``result.json`` and, written last, ``done``. Only evaluation dirs holding both become rows; one
with a ``config.yaml`` or ``result.json`` but no ``done`` counts as *incomplete*. (A dir of the
old flat layout, ``result.json`` and ``done`` at its top, is read as one row.) Nothing here ever
writes into a run dir.

``result.json`` is one flat JSON object. Its ``acc_std`` / ``acc_std__<arch>`` are the std over
the ``eval_n`` fresh evaluation models of that one run (ddof=0); the tables in
:mod:`hpcdd.report.tables` instead report mean and std *over seeds* (ddof=1).

The walk uses ``os.scandir`` and collects plain dicts; subtrees and result files are read in a
few threads (a cold cache or a network file system then waits on many files at once). The
DataFrame is built once at the end, so 10,000 runs aggregate in seconds (see
``bench/bench_aggregate.py`` and ``bench/bench_sweep_scale.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from hpcdd import rundir
from hpcdd.catalog import flat_names
from hpcdd.errors import ConfigError
from hpcdd.io import atomic_write_text
from hpcdd.sweep.state import map_io

RESULT, DONE, CONFIG, RUN_MARK = rundir.RESULT, rundir.DONE, rundir.CONFIG, rundir.RUN_MARK
LIST_SEP = "+"
"""Lists (e.g. ``eval_models``) are stored in the CSV as their items joined by this."""

REQUIRED_KEYS = ("protocol", "method", "dataset", "ipc", "seed", "acc_mean")
"""A result.json missing any of these is reported as unreadable rather than tabulated."""

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is run as a formula by spreadsheets (CSV injection)."""

_NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

_SKIP_SUBDIRS = frozenset({rundir.CHECKPOINTS, rundir.MODELS})
"""Subdirs of a run dir that never hold runs (not descended into, to keep the walk fast)."""

_SCALARS = frozenset({str, int, float, bool, type(None)})
"""Types :func:`flatten_value` returns unchanged (the common case, skipped without a call)."""

_SORT_KEYS = ("protocol", "method", "dataset", "ipc", "net", "seed")

_RUN_META = (
    "distill_seconds",
    "eval_seconds",
    "peak_rss_mb",
    "iterations_done",
    "hpcdd_version",
    "git_commit",
    "torch_version",
    "hostname",
    "device",
    "finished_at",
)


@dataclass(frozen=True)
class AggregateReport:
    """What :func:`aggregate` found besides the rows: problems are listed, never fatal."""

    roots: tuple[str, ...]
    n_rows: int = 0
    bad_files: tuple[tuple[str, str], ...] = ()
    """(path, reason) for each result.json that could not be used."""
    incomplete: tuple[str, ...] = ()
    """Run dirs with config.yaml or result.json but no ``done`` marker (not tabulated)."""
    duplicates: tuple[tuple[str, str], ...] = ()
    """(run_id, dropped run dir) for run ids found more than once (newest finished_at kept)."""

    def warnings(self) -> list[str]:
        """Human-readable warning blocks (empty when nothing went wrong)."""
        out: list[str] = []
        if self.bad_files:
            lines = [f"  {path}: {reason}" for path, reason in self.bad_files]
            out.append(
                f"skipped {len(self.bad_files)} unreadable or invalid result file(s):\n"
                + "\n".join(lines)
            )
        if self.duplicates:
            lines = [f"  {rid}: {path}" for rid, path in self.duplicates]
            out.append(
                f"ignored {len(self.duplicates)} duplicate run(s) (same run_id found twice; "
                "kept the newest finished_at):\n" + "\n".join(lines)
            )
        return out

    def summary(self) -> str:
        """One line: rows found and incomplete runs left out."""
        text = f"{self.n_rows} finished run(s) from {len(self.roots)} dir(s)"
        if self.incomplete:
            text += f"; {len(self.incomplete)} incomplete run(s) (no 'done' marker) not included"
        return text


@dataclass
class _Scan:
    results: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


def scan_runs(dirs: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[str], list]:
    """Walk ``dirs`` recursively: (finished run dirs, incomplete run dirs, (path, reason) problems).

    Symlinked subdirectories are not followed (the roots themselves may be symlinks).
    """
    scan = _Scan()
    roots = [os.fspath(d) for d in dirs]
    for root in roots:
        if not os.path.isdir(root):
            raise ConfigError(f"not a directory: {root}")
        _walk(root, scan)
    if len(roots) > 1:  # overlapping roots (runs/ and runs/a) must not count a run twice
        return _unique(scan.results), _unique(scan.incomplete), sorted(set(scan.bad))
    return sorted(scan.results), sorted(scan.incomplete), sorted(scan.bad)


def _unique(paths: list[str]) -> list[str]:
    by_real: dict[str, str] = {}
    for p in sorted(paths):
        by_real.setdefault(os.path.realpath(p), p)
    return sorted(by_real.values())


_WALK_SPLIT = 64
"""The walk goes breadth first until it has this many directories, then walks their subtrees in
threads (every list ends up sorted, so the order of the walk does not show)."""


def _walk(root: str, scan: _Scan) -> None:
    frontier = [root]
    while frontier and len(frontier) < _WALK_SPLIT:
        frontier = [sub for path in frontier for sub in _visit(path, scan)]
    for part in map_io(_walk_subtree, frontier):
        scan.results += part.results
        scan.incomplete += part.incomplete
        scan.bad += part.bad


def _walk_subtree(path: str) -> _Scan:
    scan = _Scan()
    stack = [path]
    while stack:
        stack += _visit(stack.pop(), scan)
    return scan


def _visit(path: str, scan: _Scan) -> list[str]:
    """Classify one directory into ``scan``; the subdirectories to walk next."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError as e:
        scan.bad.append((path, f"cannot list directory ({e.strerror or e})"))
        return []
    names = {e.name for e in entries}
    is_run = RESULT in names or CONFIG in names or RUN_MARK in names
    if DONE in names and RESULT in names:  # a finished evaluation: one row
        scan.results.append(path)
    elif RUN_MARK in names:  # a run dir: its rows are its eval/<id>/ dirs
        if DONE not in names:
            scan.incomplete.append(path)
    elif DONE in names:
        scan.bad.append((os.path.join(path, RESULT), "missing ('done' marker present)"))
    elif is_run:
        scan.incomplete.append(path)
    return [e.path for e in entries
            if not (is_run and e.name in _SKIP_SUBDIRS) and e.is_dir(follow_symlinks=False)]


def flatten_value(value: Any) -> Any:
    """CSV-ready scalar: lists/tuples joined with ``+``, dicts as sorted JSON text."""
    if isinstance(value, (list, tuple)):
        return LIST_SEP.join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _load_json(path: str) -> Any | None:
    """:func:`hpcdd.io.try_load_json` (UTF-8, ``None`` for anything unreadable) without a text-mode
    file object. (Its newline translation never changes a parse: a CR is JSON whitespace, or
    invalid inside a string.)"""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def load_result(run_dir: str) -> tuple[dict[str, Any] | None, str]:
    """(flat row, "") for a usable result.json, else (None, reason)."""
    data = _load_json(os.path.join(run_dir, RESULT))
    if data is None:
        return None, "not valid JSON (corrupt, truncated or unreadable)"
    if not isinstance(data, dict):
        return None, f"not a JSON object (got {type(data).__name__})"
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        return None, f"missing key(s): {', '.join(missing)}"
    bad_acc = _bad_accuracy(data)
    if bad_acc:
        return None, bad_acc
    row = {k: v if type(v) in _SCALARS else flatten_value(v) for k, v in data.items()}
    row.setdefault("run_id", os.path.basename(os.path.normpath(run_dir)))
    row["run_dir"] = run_dir
    return row, ""


def _bad_accuracy(data: dict[str, Any]) -> str:
    """Why ``acc_mean`` or an ``acc_mean__<arch>`` is not a finite number ("" if all are)."""
    for key in sorted(k for k in data if k == "acc_mean" or k.startswith("acc_mean__")):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return f"{key} is not a number (got {type(value).__name__} {shown})"
        if not math.isfinite(value):
            return f"{key} is {value}"
    return ""


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV cell that no spreadsheet runs as a formula.

    Text starting with ``= + - @``, tab or CR gets a leading ``'`` (OWASP's advice for CSV
    injection); numbers, and text that is just a number (``-0.5``), are returned unchanged.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_START):
        return value
    if _NUMBER_TEXT.fullmatch(value):
        return value
    return "'" + value


def column_order(columns: Iterable[str]) -> list[str]:
    """Stable, readable column order: identity, config, accuracies, per-arch, metadata, rest."""
    cols = list(dict.fromkeys(columns))
    present = set(cols)
    head = ["run_id", "eval_id", "protocol", *flat_names(), "acc_mean", "acc_std", "accs"]
    archs = sorted({c.split("__", 1)[1] for c in cols if c.startswith("acc_mean__")})
    per_arch = [f"{k}__{a}" for a in archs for k in ("acc_mean", "acc_std", "accs")]
    ordered = [c for c in (*head, *per_arch, *_RUN_META) if c in present]
    rest = sorted(present - set(ordered) - {"run_dir"})
    tail = ["run_dir"] if "run_dir" in present else []
    return ordered + rest + tail


def _row_key(row: dict[str, Any]) -> str:
    """A row's identity: the distillation and the evaluation (``run_id/eval_id``)."""
    return f"{row['run_id']}/{row.get('eval_id', '')}"


def _dedupe(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    best: dict[str, dict[str, Any]] = {}
    dropped: list[tuple[str, str]] = []
    for row in rows:
        key = _row_key(row)
        old = best.get(key)
        if old is None:
            best[key] = row
            continue
        newer = str(row.get("finished_at", "")) > str(old.get("finished_at", ""))
        keep, drop = (row, old) if newer else (old, row)
        best[key] = keep
        dropped.append((key, str(drop["run_dir"])))
    kept = [r for r in rows if best[_row_key(r)] is r]
    return kept, sorted(dropped)


def aggregate(dirs: Iterable[str | os.PathLike[str]]) -> tuple[pd.DataFrame, AggregateReport]:
    """One row per finished (run, evaluation) found below ``dirs``, plus a report of what was left out.

    Raises :class:`ConfigError` if a dir does not exist or no finished run is found.
    """
    roots = tuple(os.fspath(d) for d in dirs)
    if not roots:
        raise ConfigError("no runs directory given")
    finished, incomplete, bad = scan_runs(roots)
    rows: list[dict[str, Any]] = []
    for run_dir, (row, reason) in zip(finished, map_io(load_result, finished)):
        if row is None:
            bad.append((os.path.join(run_dir, RESULT), reason))
        else:
            rows.append(row)
    rows, dups = _dedupe(rows)
    report = AggregateReport(
        roots=roots,
        n_rows=len(rows),
        bad_files=tuple(sorted(bad)),
        incomplete=tuple(incomplete),
        duplicates=tuple(dups),
    )
    if not rows:
        raise ConfigError(_empty_message(roots, report))
    df = pd.DataFrame.from_records(rows)
    order = [c for c in (*_SORT_KEYS, "run_dir") if c in df.columns]
    df = df.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
    return df[column_order(df.columns)], report


def _empty_message(roots: tuple[str, ...], report: AggregateReport) -> str:
    where = ", ".join(roots)
    parts = [f"no finished runs (result.json + done) found under {where}"]
    if report.incomplete:
        parts.append(f"{len(report.incomplete)} incomplete run(s) without 'done'")
    if report.bad_files:
        path, reason = report.bad_files[0]
        parts.append(f"{len(report.bad_files)} unreadable result file(s), e.g. {path}: {reason}")
    return "; ".join(parts)


def to_csv_text(df: pd.DataFrame) -> str:
    """The CSV text :func:`write_csv` writes (no index column; text cells made
    :func:`csv_safe`, numbers untouched)."""
    safe = df.rename(columns=lambda c: csv_safe(str(c)))
    for c in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[c]):
            safe[c] = safe[c].map(csv_safe)
    return safe.to_csv(index=False, lineterminator="\n")


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the aggregate table atomically; returns the path.

    Raises :class:`~hpcdd.io.WriteError` (one line: path and reason) if ``path`` is a directory
    or cannot be written.
    """
    out = Path(path)
    atomic_write_text(out, to_csv_text(df))
    return out


def load_results_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV written by ``hpcdd aggregate``; unreadable or empty -> :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no such results file: {p}")
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ConfigError(f"cannot read results CSV {p}: {e}") from None
    if df.empty:
        raise ConfigError(f"results CSV {p} has no rows")
    return df

