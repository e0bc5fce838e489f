"""Published ConvNet-3 accuracies (``published.csv``) to show beside our own results.

``published.csv`` columns: ``method, dataset, ipc, acc, source``. ``acc`` is a test accuracy in
percent as reported in the paper named in ``source`` (ConvNet-3, the paper's own protocol; the
numbers were not re-run by hpcdd). ``ipc`` is an integer, or ``full`` for the whole training set
(method ``whole``). Method and dataset names are hpcdd's lower-case registry names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from hpcdd.errors import ConfigError

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
COLUMNS = ("method", "dataset", "ipc", "acc", "source")
LABEL = " (published)"
"""Suffix of the method name on the rows that show published numbers."""


def load_published(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The published numbers, with ``method``/``dataset``/``ipc`` as lower-case strings."""
    p = Path(path) if path is not None else PUBLISHED_CSV
    try:
        df = pd.read_csv(p, dtype={"method": str, "dataset": str, "ipc": str, "source": str})
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read published results {p}: {e}") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"published results {p} lack column(s): {', '.join(missing)}")
    for col in ("method", "dataset", "ipc"):
        df[col] = df[col].str.strip().str.lower()
    return df


def key_text(value: object) -> str:
    """Lookup form of a key value: ``10``, ``10.0`` and ``"10"`` all become ``"10"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def published_lookup(published: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """``{(method, dataset, ipc): acc_percent}``."""
    return {
        (m, d, i): float(a)
        for m, d, i, a in zip(
            published["method"], published["dataset"], published["ipc"], published["acc"]
        )
    }


def whole_set_note(published: pd.DataFrame, datasets: list[str]) -> str | None:
    """'Whole training set (published): fashionmnist 93.5.' for the datasets in a table."""
    wanted = {key_text(d) for d in datasets}
    rows = published[(published["method"] == "whole") & published["dataset"].isin(wanted)]
    if rows.empty:
        return None
    parts = [f"{d} {a:.1f}" for d, a in zip(rows["dataset"], rows["acc"])]
    return f"Whole training set (published): {', '.join(parts)}."
