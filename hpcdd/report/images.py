"""Save a synthetic set as one PNG grid: one row per class (wrapping after ``per_row`` images)."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from hpcdd.io import atomic_write_bytes

if TYPE_CHECKING:
    import torch


def _as_channel_vector(values: Sequence[float] | "torch.Tensor" | float, channels: int) -> np.ndarray:
    arr = np.asarray(values.tolist() if hasattr(values, "tolist") else values, dtype=np.float32)
    arr = arr.reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise ValueError(f"mean/std have {arr.size} entries but the images have {channels} channels")
    return arr.reshape(1, channels, 1, 1)


def grid_layout(labels: np.ndarray, per_row: int | None) -> tuple[list[list[int]], int]:
    """Image indices for each grid row (classes in ascending order; a class starts a new row),
    and the number of columns."""
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c).tolist() for c in classes]
    cols = per_row if per_row is not None else max((len(m) for m in members), default=1)
    if cols < 1:
        raise ValueError(f"per_row must be >= 1, got {per_row}")
    rows: list[list[int]] = []
    for m in members:
        for start in range(0, len(m), cols):
            rows.append(m[start : start + cols])
    return rows, cols


def image_grid(
    images: np.ndarray, labels: np.ndarray, per_row: int | None = None, pad: int = 2
) -> np.ndarray:
    """(H_total, W_total, C) float array in [0, 1] laid out by :func:`grid_layout`; white padding."""
    n, c, h, w = images.shape
    rows, cols = grid_layout(labels, per_row)
    out = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    for r, idxs in enumerate(rows):
        for j, i in enumerate(idxs):
            y, x = pad + r * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w, :] = images[i].transpose(1, 2, 0)
    return out


def save_image_grid(
    images: "torch.Tensor",
    labels: "torch.Tensor",
    mean: Sequence[float] | "torch.Tensor" | float,
    std: Sequence[float] | "torch.Tensor" | float,
    path: str | os.PathLike[str],
    per_row: int | None = None,
    *,
    pad: int = 2,
    scale: int = 1,
) -> None:
    """Un-normalise ``images`` (N, C, H, W) with per-channel ``mean``/``std``, clamp to [0, 1],
    and save a PNG atomically: one row per class (ascending label), at most ``per_row`` images
    per row (default: the largest class size, so each class is exactly one row; a class larger
    than ``per_row`` wraps onto further rows). ``pad`` pixels of white separate the images; the
    PNG is ``rows*(H+pad)+pad`` by ``cols*(W+pad)+pad`` pixels, times ``scale`` (nearest
    neighbour). C must be 1 (grey) or 3 (RGB). Raises ``ValueError`` on inconsistent shapes.
    """
    from PIL import Image

    x = images.detach().to("cpu", dtype=_float32()).numpy()
    y = labels.detach().to("cpu").reshape(-1).numpy()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C in (1, 3), got {tuple(x.shape)}")
    if y.shape[0] != x.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need one label per image, got {y.shape[0]} labels for {x.shape[0]}")
    if scale < 1 or pad < 0:
        raise ValueError(f"scale must be >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    c = x.shape[1]
    x = x * _as_channel_vector(std, c) + _as_channel_vector(mean, c)
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)
    grid = image_grid(x, y, per_row, pad)
    pixels = np.round(grid * 255.0).astype(np.uint8)
    img = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)  # uint8: mode L or RGB
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _float32() -> "torch.dtype":
    import torch

    return torch.float32


def grid_size(
    labels: Sequence[int], height: int, width: int, per_row: int | None = None, pad: int = 2
) -> tuple[int, int]:
    """(width, height) in pixels of the PNG :func:`save_image_grid` writes (scale 1)."""
    rows, cols = grid_layout(np.asarray(labels), per_row)
    return cols * (width + pad) + pad, len(rows) * (height + pad) + pad


__all__ = ["save_image_grid", "image_grid", "grid_layout", "grid_size"]
