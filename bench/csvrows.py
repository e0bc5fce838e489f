"""Shared by the bench scripts (run as ``python bench/X.py``, so this directory is on sys.path)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence


def append_rows(out: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Append ``rows`` to the CSV ``out`` (its header first when the file is new), so several runs
    of a bench (e.g. plain and tuned malloc) share one file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return out
