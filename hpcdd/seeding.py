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


def fresh_net(name: str, info, seed: int, purpose: str, device: torch.device | str = "cpu"):
    """A freshly initialised net whose weights are drawn only from ``(seed, purpose)``.

    ``info`` is the dataset's ``DatasetInfo`` (channels, classes, image size).
    """
    from hpcdd.nets import build

    net = build(name, info.channels, info.num_classes, info.im_size, generator=generator(seed, purpose))
    return net.to(device)
