"""Who/what/where produced a result: package version, git commit, host, torch."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

import hpcdd


def _git(*args: str) -> str | None:
    src = Path(hpcdd.__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str:
    """The commit of the hpcdd source tree, or 'unknown' outside a git checkout."""
    return _git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> bool | None:
    """Whether the hpcdd source files differ from the commit (None outside a checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return None if status is None else bool(status)


def provenance(device: torch.device) -> dict[str, str | bool | None]:
    return {
        "hpcdd_version": hpcdd.__version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "torch_version": torch.__version__,
        "hostname": platform.node(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
    }
