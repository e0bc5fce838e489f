"""Atomic checkpoints with fall-back to the previous one.

Files are ``checkpoint/ckpt-<iteration 8 digits>.pt``, written by ``atomic_torch_save`` (temp
file, fsync, rename), so a crash leaves either the old or the new file, never a torn one. The
newest ``KEEP`` files are kept. A reader skips an unreadable newest file and falls back to the
previous one (saying so through ``warn``: one line, never a Python ``UserWarning`` with its source
line); if files exist but none is readable, it raises ``CheckpointError``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable

from hpcdd.errors import CheckpointError
from hpcdd.io import atomic_torch_save, try_torch_load

KEEP = 2
FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every checkpoint file, newest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_checkpoint(ckpt_dir: Path, it: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint after ``it`` completed iterations; prune old ones."""
    path = ckpt_dir / f"ckpt-{it:08d}.pt"
    atomic_torch_save(path, {"format": FORMAT, "it": it, **state})
    for _, old in checkpoint_files(ckpt_dir)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def warn_line(msg: str) -> None:
    """A warning as one stderr line, ``hpcdd: warning: ...``."""
    print(f"hpcdd: warning: {msg}", file=sys.stderr, flush=True)


def load_latest(ckpt_dir: Path, run_id: str,
                restore: Callable[[dict[str, Any]], None] | None = None,
                warn: Callable[[str], None] = warn_line) -> dict[str, Any] | None:
    """The newest valid checkpoint of ``run_id``, ``None`` if there is none at all.

    With ``restore``, a checkpoint counts as valid only if ``restore(state)`` succeeds: one that
    carries the right run id but cannot be restored (a missing key, a wrong tensor shape) is
    skipped like a corrupt one, and the previous checkpoint is tried. When one is usable, each file
    skipped for it is reported by ``warn(message)`` (default: one stderr line); when none is, the
    one-line ``CheckpointError`` says why for all of them.
    """
    files = checkpoint_files(ckpt_dir)
    skipped: list[str] = []
    for it, path in files:
        state = try_torch_load(path)
        if isinstance(state, dict) and state.get("format") == FORMAT and state.get("run_id") == run_id:
            try:
                if restore is not None:
                    restore(state)
            except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as e:
                why = str(e).splitlines()[0][:200] if str(e) else ""
                skipped.append(f"skipping checkpoint {path} that cannot be restored ({type(e).__name__}: {why})")
                continue
            for msg in skipped:
                warn(msg)
            return state
        skipped.append(f"skipping unreadable or foreign checkpoint {path}")
    if files:
        foreign = sum("foreign" in msg for msg in skipped)
        raise CheckpointError(
            f"no usable checkpoint in {ckpt_dir}: {foreign} of {len(files)} unreadable or from another run, "
            f"{len(files) - foreign} not restorable; remove the directory or rerun with --overwrite"
        )
    return None
