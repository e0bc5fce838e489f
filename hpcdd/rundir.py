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
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from hpcdd.config import EvalConfig, RunConfig, from_dict, to_dict
from hpcdd.errors import ConfigError, RunDirError
from hpcdd.io import (
    append_line, atomic_write_json, atomic_write_text, atomic_write_yaml, is_stale_tmp_name, now_utc,
    try_load_json,
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
"""The names hpcdd writes at the top of a run dir (``checkpoint/`` and ``eval/`` hold only what
:func:`is_owned` accepts), in the order --overwrite deletes them: the 'done' markers first (a
half-deleted run is never taken for a finished one), the marker last (a kill in the middle leaves a
dir that is still recognised as hpcdd's and can be cleared again)."""
EVAL_FILES = (DONE, RESULT, CONFIG, JOB, LOCK)
"""What an evaluation dir ``eval/<eval_id>/`` holds besides ``models/`` (its lock: evaluations of
one run run at once, each holding its own dir)."""
_CKPT_NAME = re.compile(r"ckpt-\d{8}\.pt")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.]+-\d+\.json")

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
        with tempfile.TemporaryFile(dir=run_dir):  # nameless (O_TMPFILE) or unique: processes beside
            pass                                  # this one (evaluations of one run) probe at once
    except OSError as e:
        raise RunDirError(f"cannot write to run dir {run_dir}: {e.strerror}") from None


def check_free(run_dir: Path, ident: str, overwrite: bool = False, kind: str = RUN_KIND,
               *, clear_now: bool = True) -> None:
    """Make sure ``run_dir`` may hold the run ``ident``; writes nothing unless ``overwrite``.

    A dir holding another hpcdd run is refused unless ``overwrite`` (which deletes only the files
    hpcdd writes, see ``OWNED``; not yet with ``clear_now=False``, a check before taking the lock);
    a non-empty dir that is not an hpcdd run dir is always refused. A dir holding only what a sweep
    launch wrote (its ``job.json``, and ``eval/<id>/job.json`` with ``separate_evals``) is free:
    its job writes the identity files when it starts.
    """
    run_dir = Path(run_dir)
    mark = read_mark(run_dir)
    if mark is None:
        if run_dir.is_dir() and not _only_launch_files(run_dir):
            raise RunDirError(f"{run_dir} is not empty and is not an hpcdd run dir; choose another --out")
        return
    if mark.get("run_id") != ident and not overwrite:
        raise RunDirError(f"{run_dir} already holds a different run ({mark.get('run_id')}); "
                          "choose another --out or pass --overwrite")
    if overwrite and clear_now:
        clear(run_dir)


def _only_launch_files(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds nothing but what ``sweep launch`` (and a lock probe) writes before
    its job starts: ``job.json`` and ``eval/<eval_id>/job.json`` (and their temp files)."""
    for root, dirs, files in os.walk(run_dir):
        rel = Path(root).relative_to(run_dir).parts
        if len(rel) > 2 or (rel and rel[0] != EVALS):
            return False
        if len(rel) == 2:
            dirs_ok, names = not dirs, (JOB,)
        elif rel:
            dirs_ok, names = True, ()
        else:
            dirs_ok, names = all(d == EVALS for d in dirs), (JOB, LOCK, ".write-test")
        if not dirs_ok or any(f not in names and not is_stale_tmp_name(f) for f in files):
            return False
    return True


def is_owned(rel: tuple[str, ...]) -> bool:
    """Whether the path ``rel`` (parts relative to a run dir) is a file hpcdd writes there: a
    top-level name of ``OWNED``, ``checkpoint/ckpt-<8 digits>.pt``, an evaluation's
    ``eval/<id>/{done,result.json,config.yaml,job.json,.lock}`` and ``eval/<id>/models/<arch>-<k>.json``,
    the lock, or a temp file of an interrupted atomic write. Nothing else (a user's
    ``eval/NOTES.md``, ``checkpoint/mine.pt``) is hpcdd's."""
    if not rel:
        return False
    if is_stale_tmp_name(rel[-1]) or rel == (LOCK,) or rel == (".write-test",):
        return True
    head, depth = rel[0], len(rel)
    if head == CHECKPOINTS:
        return depth == 2 and _CKPT_NAME.fullmatch(rel[1]) is not None
    if head == EVALS:
        return (depth == 3 and rel[2] in EVAL_FILES) or (
            depth == 4 and rel[2] == MODELS and _MODEL_NAME.fullmatch(rel[3]) is not None)
    return depth == 1 and head in OWNED


def clear(run_dir: Path) -> None:
    """Delete what hpcdd wrote into ``run_dir`` (:func:`is_owned`, never anything else): the done
    markers first, ``run.json`` last; a directory of hpcdd's is removed only once it is empty."""
    run_dir = Path(run_dir)
    for done in sorted(run_dir.glob(f"{EVALS}/*/{DONE}")):
        done.unlink(missing_ok=True)
    for name in OWNED[:-1]:
        path = run_dir / name
        if name in (EVALS, CHECKPOINTS) and path.is_dir() and not path.is_symlink():
            _clear_tree(run_dir, path)
        elif path.is_file() or path.is_symlink():
            path.unlink()
    for entry in list(os.scandir(run_dir)):  # temp files of interrupted writes (the lock is held)
        if entry.name not in (RUN_MARK, LOCK) and not entry.is_dir(follow_symlinks=False) \
                and is_owned((entry.name,)):
            os.unlink(entry.path)
    (run_dir / RUN_MARK).unlink(missing_ok=True)


def _clear_tree(run_dir: Path, top: Path) -> None:
    """Delete the hpcdd files below ``top`` (``eval/`` or ``checkpoint/``), bottom up, and each
    directory left empty; symlinks are removed, never followed."""
    for root, dirs, files in os.walk(top, topdown=False):
        here = Path(root)
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            path = here / name
            if is_owned(path.relative_to(run_dir).parts):
                path.unlink()
        with contextlib.suppress(OSError):  # not empty: a user's file stays, and its dirs
            here.rmdir()


def check_output(path: str | os.PathLike[str], allow: tuple[str, ...] = ()) -> None:
    """Refuse (``ConfigError``, one line) an output path that would replace a file hpcdd owns in a
    run dir (:func:`is_owned`, e.g. ``RUN/synset.pt`` or ``RUN/eval/<id>/result.json``) or
    anything in a prerequisite's dir; ``allow`` names top-level files the caller itself writes
    there (``hpcdd show``: ``synset.png``). Symlinked parents are checked where they lead too."""
    given = Path(os.path.abspath(path))
    for target in dict.fromkeys((given, Path(os.path.realpath(given)))):
        for parent in target.parents:
            mark = read_mark(parent)
            if mark is None:
                continue
            rel = target.relative_to(parent).parts
            if mark.get("kind") == PREREQ_KIND or (is_owned(rel) and rel not in {(a,) for a in allow}):
                raise ConfigError(f"{path} is a file hpcdd owns in the run dir {parent}; "
                                  "choose another output path")
            break


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
def lock(run_dir: Path, *, shared: bool = False) -> Iterator[None]:
    """Lock on ``run_dir/.lock``, never waiting: exclusive (a distillation, an evaluation's own
    ``eval/<id>/``: no other process works there) or ``shared`` (evaluations of a finished run:
    several at once, none while a distillation holds the run dir)."""
    with open(Path(run_dir) / LOCK, "a+") as f:
        try:
            fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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
    """The evaluation finished: ``done`` and a ``result.json`` holding a JSON object (a damaged
    result is treated as missing: the evaluation is completed again from its saved models)."""
    return (eval_dir(run_dir, eid) / DONE).exists() and read_result(run_dir, eid) is not None


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
    "is_owned", "check_output", "OWNED", "ARTEFACT_FILES", "CONFIG", "LOG", "METRICS", "CHECKPOINTS",
    "DONE", "RESULT", "JOB", "LOCK", "PREREQS", "EVALS", "MODELS", "RUN_MARK", "RUN_KIND", "PREREQ_KIND",
]
