"""DSA strategy names and the per-dataset default strategy (torch-free facts used to resolve
configs; the augmentation itself is :mod:`hpcdd.augment`)."""

from __future__ import annotations

from hpcdd.errors import ConfigError

OPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
FULL_STRATEGY = "color_crop_cutout_flip_scale_rotate"
NO_FLIP_DATASETS = frozenset({"mnist", "mnist5k", "digits", "svhn"})


def default_strategy(dataset: str) -> str:
    """The full strategy, minus 'flip' for digit datasets (flipping changes a digit)."""
    if dataset.lower() in NO_FLIP_DATASETS:
        return "_".join(op for op in FULL_STRATEGY.split("_") if op != "flip")
    return FULL_STRATEGY


def check_strategy(strategy: str) -> None:
    """Raise ``ConfigError`` unless ``strategy`` is 'none' or '_'-joined known, distinct ops."""
    if strategy == "none":
        return
    ops = strategy.split("_")
    unknown = [op for op in ops if op not in OPS]
    if unknown or not strategy:
        raise ConfigError(
            f"unknown DSA op(s) {unknown or [strategy]} in strategy {strategy!r}; "
            f"use 'none' or '_'-joined ops from: {', '.join(OPS)}"
        )
    if len(set(ops)) != len(ops):
        raise ConfigError(f"DSA strategy {strategy!r} repeats an op")
