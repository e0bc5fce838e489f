"""Every random draw flows from the run's seed and a purpose string (no wall-clock seeds)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and ``purpose``."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded from ``(seed, purpose)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, purpose))
    return g
