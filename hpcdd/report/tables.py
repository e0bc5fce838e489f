"""Results tables: mean +- std over seeds, pivoted into rows x columns.

:func:`build_table` turns an aggregated results DataFrame into a :class:`TableModel` (numbers,
labels and footnotes, no formatting); :mod:`hpcdd.report.render` prints it as Markdown, LaTeX or
CSV. Conventions, stated in every table's footnote:

* ``±`` is the sample standard deviation over seeds (ddof=1), not the standard error; a cell
  with a single run shows its value without ``±``.
* accuracies (metrics named ``acc*``, stored in [0, 1]) are shown in percent;
* a missing cell is shown as ``—`` (never 0); when cells hold different numbers of runs, ``n`` is
  shown in every cell, and cells with fewer runs than expected carry a ``†``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pandas as pd

from hpcdd.errors import ConfigError
from hpcdd.report.published import LABEL, key_text, published_lookup, whole_set_note
from hpcdd.report.select import cross_arch_long, prepare, summarize

MISSING = "—"
PM = "±"
DAGGER = "†"
PUBLISHED_METRICS = ("acc_mean", "acc_mean__convnet3")
PUBLISHED_KEYS = ("method", "dataset", "ipc")


@dataclass(frozen=True)
class Cell:
    """One table entry (already scaled for display). ``mean is None`` means no runs."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    short: bool = False
    """Fewer runs than expected."""
    published: bool = False


@dataclass(frozen=True)
class TableModel:
    """A rendered-format-independent table."""

    row_keys: tuple[str, ...]
    col_keys: tuple[str, ...]
    row_labels: tuple[tuple[str, ...], ...]
    col_labels: tuple[tuple[str, ...], ...]
    """Per column, one display string per column key (e.g. ``("fashionmnist", "ipc=10")``)."""
    cells: tuple[tuple[Cell, ...], ...]
    notes: tuple[str, ...]
    metric: str
    decimals: int = 1
    show_n: bool = False


def is_accuracy(metric: str) -> bool:
    """Accuracy-like metrics are stored in [0, 1] and shown in percent."""
    return metric.startswith("acc") or metric == "eval_acc"


def _display(value: Any, key: str | None = None) -> str:
    """A key value as text; ``key=value`` for numbers when ``key`` is given (column headers)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = "none"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{key}={text}" if key is not None and numeric else text


def _tuples(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple]:
    if not keys:
        return [()]
    uniq = frame[list(keys)].drop_duplicates().sort_values(list(keys), na_position="last")
    return [tuple(r) for r in uniq.itertuples(index=False, name=None)]


def _lookup(summary: pd.DataFrame, keys: Sequence[str]) -> dict[tuple, tuple[float, float, int]]:
    out = {}
    key_cols = [summary[k] for k in keys]
    for i, (mean, std, n) in enumerate(zip(summary["mean"], summary["std"], summary["n"])):
        out[tuple(c.iat[i] for c in key_cols)] = (mean, std, int(n))
    return out


def _norm(t: tuple) -> tuple:
    """Hashable, NaN-safe form of a key tuple (NaN != NaN would break dict lookups)."""
    return tuple("\0nan" if isinstance(v, float) and math.isnan(v) else v for v in t)


def _our_cells(
    summary: pd.DataFrame,
    row_t: list[tuple],
    col_t: list[tuple],
    rows: Sequence[str],
    cols: Sequence[str],
    scale: float,
) -> list[list[tuple[float, float, int] | None]]:
    table = {_norm(k): v for k, v in _lookup(summary, [*rows, *cols]).items()}
    grid = []
    for r in row_t:
        line = []
        for c in col_t:
            hit = table.get(_norm(r + c))
            if hit is None or hit[2] == 0:
                line.append(None)
            else:
                mean, std, n = hit
                line.append((mean * scale, std * scale if n > 1 else math.nan, n))
        grid.append(line)
    return grid


def _published_row(
    r: tuple, col_t: list[tuple], rows: Sequence[str], cols: Sequence[str], pub: dict
) -> list[Cell] | None:
    cells, any_hit = [], False
    for c in col_t:
        keys = dict(zip([*rows, *cols], r + c))
        acc = pub.get(tuple(key_text(keys[k]) for k in PUBLISHED_KEYS))
        cells.append(Cell(mean=acc, published=True) if acc is not None else Cell(published=True))
        any_hit = any_hit or acc is not None
    return cells if any_hit else None


def _check_published(rows: Sequence[str], cols: Sequence[str], metric: str) -> None:
    keys = [*rows, *cols]
    if "method" not in rows or not {"dataset", "ipc"} <= set(keys) or set(keys) - set(
        PUBLISHED_KEYS
    ):
        raise ConfigError(
            "--with-published needs --rows to include method and the table keyed by "
            "method, dataset and ipc only (e.g. --rows method --cols dataset,ipc)"
        )
    if metric not in PUBLISHED_METRICS:
        raise ConfigError(
            f"--with-published compares ConvNet-3 test accuracy; use --metric "
            f"{' or '.join(PUBLISHED_METRICS)}, not {metric!r}"
        )


def build_table(
    df: pd.DataFrame,
    rows: Sequence[str],
    cols: Sequence[str] = (),
    metric: str = "acc_mean",
    *,
    protocol: str | None = None,
    where: Iterable[str] = (),
    expect: int | None = None,
    published: pd.DataFrame | None = None,
    decimals: int | None = None,
) -> TableModel:
    """Pivot of mean ± std over seeds of ``metric``; see the module docstring for conventions."""
    rows, cols = list(rows), list(cols)
    if not rows:
        raise ConfigError("a table needs at least one --rows column")
    if expect is not None and expect < 1:
        raise ConfigError(f"--expect must be >= 1, got {expect}")
    if published is not None:
        _check_published(rows, cols, metric)
    ignore = ("eval_models",) if "__" in metric else ()
    data = prepare(df, [*rows, *cols], metric, protocol=protocol, where=where, ignore=ignore)
    return _assemble(data, rows, cols, metric, expect, published, decimals, cross_arch=False)


def build_cross_arch(
    df: pd.DataFrame,
    rows: Sequence[str] = ("net",),
    cols: Sequence[str] = (),
    metric: str = "acc_mean",
    *,
    protocol: str | None = None,
    where: Iterable[str] = (),
    expect: int | None = None,
    decimals: int | None = None,
) -> TableModel:
    """Train model (``net``) x evaluation model matrix from the ``<metric>__<arch>`` columns."""
    rows = list(rows) or ["net"]
    long = cross_arch_long(df, metric)
    keys = [*rows, *cols, "eval_model"]
    data = prepare(long, keys, metric, protocol=protocol, where=where, ignore=("eval_models",))
    return _assemble(
        data, rows, [*cols, "eval_model"], metric, expect, None, decimals, cross_arch=True
    )


def _assemble(
    data: pd.DataFrame,
    rows: list[str],
    cols: list[str],
    metric: str,
    expect: int | None,
    published: pd.DataFrame | None,
    decimals: int | None,
    cross_arch: bool,
) -> TableModel:
    acc = is_accuracy(metric)
    summary = summarize(data, [*rows, *cols], metric)
    row_t, col_t = _tuples(summary, rows), _tuples(summary, cols)
    grid = _our_cells(summary, row_t, col_t, rows, cols, 100.0 if acc else 1.0)
    ns = sorted({c[2] for line in grid for c in line if c is not None})
    if not ns:
        raise ConfigError(f"the selected runs have no value for {metric!r}")
    expected = expect if expect is not None else max(ns)
    show_n = len(ns) > 1 or ns != [expected]
    pub = published_lookup(published) if published is not None else None
    labels: list[tuple[str, ...]] = []
    cells: list[tuple[Cell, ...]] = []
    for r, line in zip(row_t, grid):
        labels.append(tuple(_display(v) for v in r))
        cells.append(tuple(_cell(c, expected) for c in line))
        extra = _published_row(r, col_t, rows, cols, pub) if pub is not None else None
        if extra is not None:
            i = rows.index("method")
            labels.append(tuple(_display(v) + (LABEL if j == i else "") for j, v in enumerate(r)))
            cells.append(tuple(extra))
    col_labels = tuple(
        tuple(_display(v, k if not _is_text_key(data, k) else None) for k, v in zip(cols, c))
        for c in col_t
    )
    flat = [c for line in cells for c in line]
    notes = _notes(data, metric, acc, ns, expected, flat, published, rows, cols, cross_arch)
    return TableModel(
        row_keys=tuple(rows),
        col_keys=tuple(cols),
        row_labels=tuple(labels),
        col_labels=col_labels,
        cells=tuple(cells),
        notes=tuple(notes),
        metric=metric,
        decimals=decimals if decimals is not None else (1 if acc else 2),
        show_n=show_n,
    )


def _is_text_key(data: pd.DataFrame, key: str) -> bool:
    col = data[key]
    return pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col)


def _cell(hit: tuple[float, float, int] | None, expected: int) -> Cell:
    if hit is None:
        return Cell()
    mean, std, n = hit
    return Cell(mean=mean, std=None if math.isnan(std) else std, n=n, short=n < expected)


def _notes(
    data: pd.DataFrame,
    metric: str,
    acc: bool,
    ns: list[int],
    expected: int,
    cells: list[Cell],
    published: pd.DataFrame | None,
    rows: list[str],
    cols: list[str],
    cross_arch: bool,
) -> list[str]:
    protocols = sorted(map(str, data["protocol"].dropna().unique())) if "protocol" in data else []
    head = f"{metric}{' (%)' if acc else ''}"
    if protocols:
        head += f", protocol {', '.join(protocols)}"
    notes = [head + "."]
    if cross_arch:
        notes.append(
            f"Rows: {', '.join(rows)} (network used for distillation); columns: evaluation "
            f"model (from {metric}__<arch>)."
        )
    notes.append(
        f"Cells: mean {PM} std over seeds (sample std, ddof=1; not the standard error); "
        f"a cell with one run shows its value without {PM}."
    )
    if len(ns) == 1 and ns[0] == expected:
        notes.append(f"n = {ns[0]} run(s) per cell.")
    else:
        notes.append("n = runs (seeds) in the cell.")
    if any(c.mean is None for c in cells):
        notes.append(f"{MISSING} = no runs" + (" / not published." if published is not None else "."))
    if any(c.short for c in cells):
        notes.append(f"{DAGGER} = fewer runs than expected ({expected}).")
    if published is not None:
        notes.append(
            f"Rows marked{LABEL}: ConvNet-3 accuracies as reported in the papers "
            "(hpcdd/report/published.csv), not re-run by hpcdd."
        )
        whole = whole_set_note(published, list(data["dataset"].unique()))
        if whole:
            notes.append(whole)
    return notes
