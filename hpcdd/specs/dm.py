"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from hpcdd.specs.base import MethodSpec, register_method
from hpcdd.specs.images import ImageParams


@dataclass(frozen=True)
class DMParams(ImageParams):
    """DM's knobs; defaults from the official code (image SGD lr 1.0, momentum 0.5)."""

    lr_img: float = 1.0
    """Learning rate of the synthetic images (SGD); DM: 1.0."""


register_method(MethodSpec(
    name="dm", impl="hpcdd.distill.dm:DM", params=DMParams,
    summary="Distribution Matching: mean embeddings of a fresh random ConvNet per iteration",
    defaults={"iterations": 20000},
))
