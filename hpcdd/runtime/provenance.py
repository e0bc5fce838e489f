"""Who/what/where produced a result: package version, git commit, host, torch."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

import hpcdd


def git_commit() -> str:
    """The commit of the hpcdd source tree, or 'unknown' outside a git checkout."""
    src = Path(hpcdd.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def provenance(device: torch.device) -> dict[str, str]:
    return {
        "hpcdd_version": hpcdd.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "hostname": platform.node(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
    }
