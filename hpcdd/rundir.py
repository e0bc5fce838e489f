"""The run-dir layout, owned here and nowhere else (torch-free: sweep/ and report/ use it).

A run dir (``RUNS_DIR/<run_id>``, or any ``--out``)::

    run.json         {"kind": "hpcdd-run", "run_id", ...}: marks the dir as hpcdd's (written first)
    config.yaml      the resolved RunConfig (nested params / sampler_params)
    log.txt          one line per event (start, resume, checkpoint, finish, error)
    metrics.jsonl    {"it", "loss", ...} per iteration; {"it", "eval_acc", ...} quick evals
    checkpoint/      ckpt-<it>.pt, the newest two kept
    synset.pt        the artefact of an image method ({"images", "labels", "info", ...}), or
    generator.pt     the artefact of a generator method
    prerequisites.json  the prerequisite artefacts the run used (kind, id, dir)
    done             written last by the distillation: the artefact is complete
    job.json         the scheduler job that runs it (sweeps)
    eval/<eval_id>/  one evaluation: config.yaml (EvalConfig), models/<arch>-<k>.json (one per
                     finished model), result.json (the row), done (written last), job.json

A prerequisite's dir (``ARTEFACT_ROOT/<kind>/<id>``) has the same layout with ``kind``
``hpcdd-prereq`` in run.json and its artefact file instead of synset.pt.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from hpcdd.config import EvalConfig, RunConfig, from_dict, to_dict
from hpcdd.errors import RunDirError
from hpcdd.io import (
    append_line, atomic_write_json, atomic_write_text, atomic_write_yaml, now_utc, try_load_json,
)

RUN_MARK = "run.json"
CONFIG = "config.yaml"
LOG = "log.txt"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoint"
DONE = "done"
RESULT = "result.json"
JOB = "job.json"
LOCK = ".lock"
PREREQS = "prerequisites.json"
EVALS = "eval"
MODELS = "models"
ARTEFACT_FILES = {"images": "synset.pt", "generator": "generator.pt"}
"""The artefact file of each method output kind."""
PNG = "synset.png"
"""What ``hpcdd show`` wrote into run dirs before it took ``-o``; still removed by --overwrite."""

OWNED = (DONE, RESULT, *ARTEFACT_FILES.values(), PNG, EVALS, CHECKPOINTS, METRICS, PREREQS, JOB,
         LOG, CONFIG, RUN_MARK)
"""Everything hpcdd writes into a run dir, in the order --overwrite deletes it: the 'done'
markers first (a half-deleted run is never taken for a finished one), the marker last (a kill in
the middle leaves a dir that is still recognised as hpcdd's and can be cleared again)."""

RUN_KIND, PREREQ_KIND = "hpcdd-run", "hpcdd-prereq"


def log(run_dir: Path, msg: str) -> None:
    """Append a UTC-stamped line to ``log.txt``."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    append_line(Path(run_dir) / LOG, f"{stamp} {msg}")


def read_mark(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of an hpcdd run or prerequisite dir; ``None`` for any other directory."""
    data = try_load_json(Path(run_dir) / RUN_MARK)
    if isinstance(data, dict) and data.get("kind") in (RUN_KIND, PREREQ_KIND):
        return data
    return None


def read_config(run_dir: Path) -> RunConfig | None:
    """The RunConfig stored in an hpcdd run dir, ``None`` if the dir is not one."""
    from hpcdd.yamlfile import load_yaml_file

    run_dir = Path(run_dir)
    if read_mark(run_dir) is None or not (run_dir / CONFIG).exists():
        return None
    data = load_yaml_file(run_dir / CONFIG, what="run config")
    return from_dict(RunConfig, data, where=str(run_dir / CONFIG))


def is_done(run_dir: Path) -> bool:
    """The distillation (or prerequisite) finished: its artefact is complete."""
    return (Path(run_dir) / DONE).exists()


def ensure_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and check that files can be written in it."""
    run_dir = Path(run_dir)
    if str(run_dir) in ("", "."):
        raise RunDirError("the run dir must be a named directory, not the current one")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run dir {run_dir}: {e.strerror}") from None


def check_free(run_dir: Path, ident: str, overwrite: bool = False, kind: str = RUN_KIND,
               *, clear_now: bool = True) -> None:
    """Make sure ``run_dir`` may hold the run ``ident``; writes nothing unless ``overwrite``.

    A dir holding another hpcdd run is refused unless ``overwrite`` (which deletes only the files
    hpcdd writes, see ``OWNED``; not yet with ``clear_now=False``, a check before taking the lock);
    a non-empty dir that is not an hpcdd run dir is always refused. A dir holding only the
    ``job.json`` a sweep launch wrote is free: its job writes the identity files when it starts.
    """
    run_dir = Path(run_dir)
    mark = read_mark(run_dir)
    if mark is None:
        if run_dir.is_dir() and any(p.name not in (LOCK, ".write-test", JOB) for p in run_dir.iterdir()):
            raise RunDirError(f"{run_dir} is not empty and is not an hpcdd run dir; choose another --out")
        return
    if mark.get("run_id") != ident and not overwrite:
        raise RunDirError(f"{run_dir} already holds a different run ({mark.get('run_id')}); "
                          "choose another --out or pass --overwrite")
    if overwrite and clear_now:
        clear(run_dir)


def clear(run_dir: Path) -> None:
    """Delete what hpcdd wrote into ``run_dir`` (never anything else), done markers first."""
    for name in OWNED:
        if name == EVALS:  # each evaluation's done marker before its other files
            for done in sorted((run_dir / EVALS).glob(f"*/{DONE}")):
                done.unlink(missing_ok=True)
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_identity(run_dir: Path, ident: str, config: Any, kind: str = RUN_KIND,
                   *, fsync_dir: bool = True, **extra: Any) -> None:
    """Write ``run.json`` then ``config.yaml`` unless the dir has them (a run dir ready to run)."""
    run_dir = Path(run_dir)
    if read_mark(run_dir) is None:
        atomic_write_json(run_dir / RUN_MARK, {"kind": kind, "run_id": ident, "created_at": now_utc(),
                                               **extra}, fsync_dir=fsync_dir)
    if not (run_dir / CONFIG).exists():
        atomic_write_yaml(run_dir / CONFIG, to_dict(config), fsync_dir=fsync_dir)


def mark_done(run_dir: Path, ident: str) -> None:
    atomic_write_text(Path(run_dir) / DONE, ident + "\n")


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``run_dir/.lock``: two processes never work in one dir at once."""
    with open(Path(run_dir) / LOCK, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run_dir} is in use by another hpcdd process") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def artefact_path(run_dir: Path, output: str) -> Path:
    return Path(run_dir) / ARTEFACT_FILES[output]


# ----------------------------------------------------------------------------------------------
# evaluations


def eval_dir(run_dir: Path, eid: str) -> Path:
    return Path(run_dir) / EVALS / eid


def eval_ids(run_dir: Path) -> list[str]:
    """Ids of the evaluations present under ``run_dir`` (finished or not), sorted."""
    root = Path(run_dir) / EVALS
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def read_eval_config(run_dir: Path, eid: str) -> EvalConfig | None:
    from hpcdd.yamlfile import load_yaml_file

    path = eval_dir(run_dir, eid) / CONFIG
    if not path.exists():
        return None
    return from_dict(EvalConfig, load_yaml_file(path, what="evaluation config"), where=str(path))


def eval_done(run_dir: Path, eid: str) -> bool:
    d = eval_dir(run_dir, eid)
    return (d / DONE).exists() and try_load_json(d / RESULT) is not None


def read_result(run_dir: Path, eid: str) -> dict[str, Any] | None:
    data = try_load_json(eval_dir(run_dir, eid) / RESULT)
    return data if isinstance(data, dict) else None


def model_file(run_dir: Path, eid: str, arch: str, k: int) -> Path:
    return eval_dir(run_dir, eid) / MODELS / f"{arch}-{k}.json"


def artefact_root(configured: str | None) -> Path:
    """Where prerequisite artefacts live: the exec setting, $HPCDD_ARTEFACTS, or the user cache."""
    if configured:
        return Path(configured)
    env = os.environ.get("HPCDD_ARTEFACTS")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hpcdd" / "artefacts"


def prereq_dir(root: Path, kind: str, pid: str) -> Path:
    return Path(root) / kind / pid


__all__ = [
    "log", "read_mark", "read_config", "is_done", "ensure_writable", "check_free", "clear",
    "write_identity", "mark_done", "lock", "artefact_path", "eval_dir", "eval_ids",
    "read_eval_config", "eval_done", "read_result", "model_file", "artefact_root", "prereq_dir",
    "OWNED", "ARTEFACT_FILES", "CONFIG", "LOG", "METRICS", "CHECKPOINTS", "DONE", "RESULT", "JOB",
    "LOCK", "PREREQS", "EVALS", "MODELS", "RUN_MARK", "RUN_KIND", "PREREQ_KIND",
]
