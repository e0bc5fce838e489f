"""Shared by the bench scripts (run as ``python bench/X.py``, so this directory is on sys.path)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
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


def write_text(out: str | Path, text: str) -> Path:
    """Write ``text`` to ``out`` atomically (a temporary file in the same directory, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return out


def write_rows(out: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` as the CSV ``out`` (replacing it atomically): one command's complete table."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return write_text(out, buf.getvalue())


def git_head(repo: str | Path, paths: Sequence[str]) -> str:
    """``repo``'s HEAD (12 hex digits), with '+dirty' when ``paths`` differ from it; 'unknown'
    outside a git checkout."""
    def git(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=all", "--", *paths).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip()[:12] + ("+dirty" if dirty else "")
