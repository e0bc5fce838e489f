"""Parameters shared by the methods that optimise a fixed set of synthetic images (DM, DC, DSA)."""

from __future__ import annotations

from dataclasses import dataclass

from hpcdd.config import check_config
from hpcdd.errors import ConfigError

INITS = ("real", "noise", "kmeans")


@dataclass(frozen=True)
class ImageParams:
    """Synthetic-image optimisation: SGD on the pixels, and how the images start."""

    lr_img: float = 1.0
    """Learning rate of the synthetic images (SGD)."""
    momentum_img: float = 0.5
    """SGD momentum of the synthetic images."""
    init: str = "real"
    """Initial images: real (random real images), noise (standard normal), kmeans (the real
    images nearest the per-class k-means centroids of the matching net's embeddings)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.lr_img <= 0:
            raise ConfigError(f"lr_img must be > 0, got {self.lr_img}")
        if not 0 <= self.momentum_img < 1:
            raise ConfigError(f"momentum_img must be in [0, 1), got {self.momentum_img}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
