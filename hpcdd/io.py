"""The one way hpcdd writes files: temp file in the same dir, fsync, then ``os.replace``.

Readers treat a truncated or unreadable file as missing (``None``) rather than crashing.

Crash guarantee of :func:`atomic_write_bytes` (and its text/json/yaml/torch wrappers): at every
instant, ``path`` holds either its complete old content (or is absent, if it was) or the
complete new content, never a mix. The file's data is fsynced before the rename, so a rename
that survives a crash never exposes a truncated file. With ``fsync_dir=True`` (the default) the
directory is fsynced too, so after the call returns the new content survives a power loss; with
``fsync_dir=False`` the rename itself may still be lost in a crash (``path`` then shows the old
content) until :func:`fsync_dir` is called on the directory.

An interrupted write (kill, power loss) can leave a temp file ``.<name>.<8 chars>.tmp`` behind;
:func:`clean_stale_tmp` removes exactly those. Files get the mode a plain ``open()`` would give
(``0o666`` less the umask), not ``mkstemp``'s 0600, so teammates can read shared results.

torch is imported only inside :func:`atomic_torch_save` and :func:`try_torch_load`, so the
light commands (aggregate, table, sweep status) start without it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from hpcdd.errors import HpcddError

_TMP_PREFIX = "."
_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")
"""What ``mkstemp(prefix=f".{name}.", suffix=".tmp")`` creates (8 random chars from
``tempfile``'s alphabet); :func:`clean_stale_tmp` removes only names matching this in full."""

_UMASK_LOCK = threading.Lock()
"""Serialises the ``os.umask`` read-by-setting fallback (only where /proc is missing)."""

_FCHMOD_UNSUPPORTED = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL})


class WriteError(HpcddError, OSError):
    """A file could not be written (disk full, permission denied, read-only file system, ...).

    One line naming the path and the reason, like every :class:`HpcddError`; also an ``OSError``
    (with the original ``errno``), so code that already tolerates ``OSError`` keeps doing so.
    """


def _write_error(message: str, cause: OSError) -> WriteError:
    err = WriteError(f"{message}: {cause.strerror or cause}")
    err.errno = cause.errno  # str(err) stays the message: strerror is left unset
    return err


def os_error_line(e: OSError) -> str:
    """One line for an ``OSError`` that escaped the helpers above (a write deep inside a library):
    the file and the reason, e.g. ``cannot write runs/x/eval: No space left on device``."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    return f"cannot write{where}: {e.strerror or e}"


def now_utc() -> str:
    """The current UTC time as ISO 8601 seconds (timestamps in run files; never a seed)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc/self/status`` shows it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # No /proc (or a kernel before 4.7): read it by setting it. 0o077 for the instant in
    # between can only make a file another thread creates meanwhile *less* readable.
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def _sync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise _write_error(f"cannot sync directory {directory}", e) from None


def fsync_dir(path: str | Path) -> None:
    """fsync the directory ``path``, making the renames done in it durable.

    For callers that write many files with ``fsync_dir=False``: sync each directory once at the
    end. Raises :class:`WriteError` (one line) if it cannot be opened or synced.
    """
    _sync_dir(Path(path))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def sync_filesystem(path: str | Path) -> None:
    """Make everything written so far on the file system holding ``path`` durable, with one
    ``syncfs`` call (``sync`` where syncfs is unavailable): what a caller that wrote many small
    files with ``sync=False`` does once at the end, instead of two fsyncs per file."""
    import ctypes
    import ctypes.util

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise _write_error(f"cannot sync {path}", e) from None
    try:
        name = ctypes.util.find_library("c")
        syncfs = getattr(ctypes.CDLL(name, use_errno=True), "syncfs", None) if name else None
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync_dir: bool = True, sync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring for the crash guarantee).

    The parent directories are created. The file gets mode ``0o666`` less the umask. On any
    ``OSError`` (disk full, permission denied, ``path`` is a directory, ...) the temp file is
    removed, the old ``path`` is left as it was, and :class:`WriteError` names the path and
    the reason. ``fsync_dir=False`` skips the directory fsync (the data itself is still
    fsynced); call :func:`fsync_dir` later. ``sync=False`` skips both fsyncs: readers still never
    see a torn file, but the write is durable only after a later :func:`sync_filesystem`.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a parent dir should be
            raise NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a directory") from None
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", suffix=_TMP_SUFFIX,
                                   dir=path.parent)
        try:
            _write_all(fd, data)
            try:
                os.fchmod(fd, default_file_mode())
            except OSError as e:  # e.g. some network file systems: keep mkstemp's 0600
                if e.errno not in _FCHMOD_UNSUPPORTED:
                    raise
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise _write_error(f"cannot write {path}", e) from None
        raise
    if fsync_dir and sync:
        _sync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, *, fsync_dir: bool = True, sync: bool = True) -> None:
    """:func:`atomic_write_bytes` of ``text`` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync_dir=fsync_dir, sync=sync)


def atomic_write_json(path: str | Path, obj: Any, *, fsync_dir: bool = True, sync: bool = True) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON with sorted keys."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text, fsync_dir=fsync_dir, sync=sync)


def atomic_write_yaml(path: str | Path, obj: Any, *, fsync_dir: bool = True) -> None:
    """:func:`atomic_write_text` of ``obj`` as YAML with sorted keys."""
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=True), fsync_dir=fsync_dir)


def atomic_torch_save(path: str | Path, obj: Any, *, fsync_dir: bool = True) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue(), fsync_dir=fsync_dir)


def is_stale_tmp_name(name: str) -> bool:
    """Whether ``name`` is exactly what :func:`atomic_write_bytes` names its temp files."""
    return _TMP_NAME.fullmatch(name) is not None


def clean_stale_tmp(directory: str | Path, *, recursive: bool = False) -> list[Path]:
    """Remove the temp files that interrupted atomic writes left in ``directory``.

    Only regular files named ``.<name>.<8 chars>.tmp`` (exactly as :func:`atomic_write_bytes`
    names them) are removed; anything else (``notes.tmp``, ``.hidden``, dirs, symlinks) is
    never touched. ``recursive`` also cleans subdirectories (symlinks are not followed). Call
    it only while no other process writes there (e.g. under the run-dir lock). Returns the
    removed paths; a missing directory gives ``[]``; a file that cannot be removed raises
    :class:`WriteError`.
    """
    removed: list[Path] = []
    stack = [Path(directory)]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _write_error(f"cannot list {here}", e) from None
        for entry in entries:
            if recursive and entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and is_stale_tmp_name(entry.name):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise _write_error(f"cannot remove stale temp file {entry.path}", e) from None
                removed.append(Path(entry.path))
    return sorted(removed)


def append_line(path: str | Path, line: str) -> None:
    """Append one line (for logs such as metrics.jsonl); a torn last line is skipped by readers.

    A failed append (disk full, permission denied, ...) raises :class:`WriteError`: one line
    naming the path and the reason."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
    except OSError as e:
        raise _write_error(f"cannot append to {path}", e) from None


def try_load_json(path: str | Path) -> Any | None:
    """The parsed JSON, or ``None`` if the file is missing, truncated or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def try_torch_load(path: str | Path) -> Any | None:
    """``torch.load(weights_only=True)``, or ``None`` if missing, truncated or unreadable."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any decode failure means "corrupt"
        return None


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; unreadable lines (e.g. a torn last line) are skipped."""
    rows: list[dict] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows
