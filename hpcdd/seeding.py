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


def fresh_net(name: str, info: "DatasetInfo", seed: int, purpose: str, device: torch.device | str = "cpu"):  # noqa: F821
    """Build a freshly initialised net whose weights come from ``(seed, purpose)``.

    torch's init functions draw from the global RNG, so the build runs inside ``fork_rng``
    with an explicitly derived seed; the caller's global RNG state is left untouched.
    """
    from hpcdd.nets import build

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, purpose))
        net = build(name, info.channels, info.num_classes, info.im_size)
    return net.to(device)
