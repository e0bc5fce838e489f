"""The one seam through which a job writes its run dir (or prerequisite dir).

With several processes only the main one writes: it gets a :class:`RunWriter`, every other rank a
:class:`ReadOnlyWriter` with the same methods doing nothing. The code that distils, checkpoints,
logs and evaluates calls the writer it was handed and never asks which rank it is on. One process
gets a ``RunWriter`` and writes exactly what it always did.

:meth:`RunWriter.session` is where a job enters its dir: rank 0 takes the dir's lock and prepares
it (identity files, stale temp files) while the others wait; an error there reaches every rank.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from hpcdd import rundir
from hpcdd.io import (
    append_line, atomic_torch_save, atomic_write_json, atomic_write_text, atomic_write_yaml, read_jsonl,
)
from hpcdd.runtime.dist import SINGLE, Dist


class RunWriter:
    """Writes the files of one run (or prerequisite) dir; paths are absolute or inside it."""

    writes = True

    def __init__(self, run_dir: Path, dist: Dist = SINGLE) -> None:
        self.run_dir = Path(run_dir)
        self.dist = dist

    def at(self, other: Path) -> "RunWriter":
        """The same kind of writer for another dir (a prerequisite's)."""
        return type(self)(other, self.dist)

    def log(self, msg: str) -> None:
        rundir.log(self.run_dir, msg)

    def metric(self, row: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl``."""
        append_line(self.run_dir / rundir.METRICS, json.dumps(row))

    def truncate_metrics(self, start: int) -> None:
        truncate_metrics(self.run_dir / rundir.METRICS, start)

    def json(self, path: Path, data: Any) -> None:
        atomic_write_json(path, data)

    def yaml(self, path: Path, data: Any) -> None:
        atomic_write_yaml(path, data)

    def torch(self, path: Path, obj: Any) -> None:
        atomic_torch_save(path, obj)

    def checkpoint(self, ckpt_dir: Path, it: int, state: dict[str, Any]) -> None:
        from hpcdd.runtime.checkpoint import save_checkpoint

        save_checkpoint(ckpt_dir, it, state)

    def mkdir(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def mark_done(self, path: Path, ident: str) -> None:
        rundir.mark_done(path, ident)

    def own(self, save: Callable[..., Any], *args: Any) -> None:
        """Run ``save(*args)``, a job's own writer of its artefact files (e.g.
        ``PrereqJob.save(out_dir)``, which writes through :mod:`hpcdd.io` itself)."""
        save(*args)

    @contextlib.contextmanager
    def session(self, prepare: Callable[[], None], *,
                lock: Callable[[Path], Any] = rundir.lock, where: Path | None = None) -> Iterator[None]:
        """Hold ``lock(dir)`` (rank 0) for the block, after ``prepare()`` ran under it (it checks
        the dir, removes stale temp files, writes the identity); the other ranks wait for that at a
        barrier, and get rank 0's ``HpcddError`` if it failed. A block that ends normally ends at a
        barrier too (e.g. a prerequisite's artefact is written before another rank loads it).
        ``dir`` is the run dir, or ``where`` (e.g. an evaluation's own dir)."""
        directory = self.run_dir if where is None else Path(where)
        with contextlib.ExitStack() as stack:
            def enter() -> None:
                rundir.ensure_writable(directory)
                stack.enter_context(lock(directory))
                prepare()

            self.dist.main_first(enter)
            yield
            self.dist.main_first(lambda: None)  # what rank 0 wrote is there before any rank reads it


class ReadOnlyWriter(RunWriter):
    """The writer of a process that is not the main one: it writes nothing."""

    writes = False

    def log(self, msg: str) -> None:
        pass

    def metric(self, row: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, start: int) -> None:
        pass

    def json(self, path: Path, data: Any) -> None:
        pass

    def yaml(self, path: Path, data: Any) -> None:
        pass

    def torch(self, path: Path, obj: Any) -> None:
        pass

    def checkpoint(self, ckpt_dir: Path, it: int, state: dict[str, Any]) -> None:
        pass

    def mkdir(self, path: Path) -> None:
        pass

    def mark_done(self, path: Path, ident: str) -> None:
        pass

    def own(self, save: Callable[..., Any], *args: Any) -> None:
        pass


def truncate_metrics(path: Path, start: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone).

    Loss rows carry the iteration index (``it < start`` were done); eval rows carry the number
    of completed iterations (``it <= start`` were done). Unreadable lines are dropped.
    """
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if _kept(r, start)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _kept(row: dict[str, Any], start: int) -> bool:
    try:
        it = int(row.get("it", 0))
    except (TypeError, ValueError):
        return False
    return it < start or ("eval_acc" in row and it == start)


def writer_for(run_dir: Path, dist: Dist = SINGLE) -> RunWriter:
    """The writer this process uses for ``run_dir``: a real one on the main process only."""
    return (RunWriter if dist.is_main else ReadOnlyWriter)(run_dir, dist)


__all__ = ["RunWriter", "ReadOnlyWriter", "writer_for", "truncate_metrics"]
