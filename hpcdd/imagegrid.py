"""Save a synthetic set as one labelled PNG grid: one row per class, the class name at its left.

A low-level writer (torch, matplotlib and PIL imported when called) below both the methods (the
GAN pretraining's sample grids) and the report layer (``hpcdd show``), so neither lifts the other.

The tiles are laid out by ``torchvision.utils.make_grid`` (white padding; a class with fewer
images than the widest row is filled with white tiles) after a nearest-neighbour upscale by an
integer ``scale``, so a 28 px Fashion-MNIST image becomes a 112 px tile at the default
``scale=4``. The class names are drawn by matplotlib on a :class:`~matplotlib.figure.Figure`
(Agg canvas, no pyplot) that holds the grid pixel for pixel; the grid is its right-hand part.
"""

from __future__ import annotations

import io
import math
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from hpcdd.io import atomic_write_bytes

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

DEFAULT_SCALE = 4
LABEL_DPI = 72  # 1 pt == 1 px, so font sizes are in pixels
LABEL_MARGIN = 6  # px of white on each side of the class names


def _as_channel_vector(values: Sequence[float] | "torch.Tensor" | float, channels: int) -> np.ndarray:
    arr = np.asarray(values.tolist() if hasattr(values, "tolist") else values, dtype=np.float32)
    arr = arr.reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise ValueError(f"mean/std have {arr.size} entries but the images have {channels} channels")
    return arr.reshape(1, channels, 1, 1)


def select_per_class(labels: np.ndarray, max_per_class: int | None) -> np.ndarray:
    """Indices of the first ``max_per_class`` images of each class, in their original order
    (all indices when None)."""
    labels = np.asarray(labels).reshape(-1)
    if max_per_class is None:
        return np.arange(len(labels))
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    return np.flatnonzero(rank < max_per_class)


def grid_layout(labels: np.ndarray, per_row: int | None) -> tuple[list[list[int]], int]:
    """Image indices for each grid row (classes in ascending order; a class starts a new row),
    and the number of columns."""
    labels = np.asarray(labels).reshape(-1)
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


def grid_size(
    labels: Sequence[int],
    height: int,
    width: int,
    per_row: int | None = None,
    pad: int = 2,
    scale: int = 1,
    max_per_class: int | None = None,
) -> tuple[int, int]:
    """(width, height) in pixels of the tile grid for ``height`` x ``width`` images: the PNG of
    :func:`save_image_grid` has this height, and this width plus the class-name column."""
    labels = np.asarray(labels).reshape(-1)
    rows, cols = grid_layout(labels[select_per_class(labels, max_per_class)], per_row)
    return cols * (width * scale + pad) + pad, len(rows) * (height * scale + pad) + pad


def tile_grid(
    pixels: "torch.Tensor", labels: np.ndarray, per_row: int | None = None, pad: int = 2,
    scale: int = 1,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """uint8 (N, C, H, W) images -> ((H_grid, W_grid, 3) uint8 array, [(row, class) for the
    first row of each class]). ``torchvision.utils.make_grid`` lays the tiles out after a
    nearest-neighbour upscale by ``scale``; empty places and the padding are white."""
    import torch
    from torchvision.utils import make_grid

    rows, cols = grid_layout(labels, per_row)
    big = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    blank = torch.full_like(big[0], 255)
    tiles = [big[i] if j < len(idxs) else blank for idxs in rows
             for j, i in enumerate(idxs + [-1] * (cols - len(idxs)))]
    grid = make_grid(torch.stack(tiles), nrow=cols, padding=pad, pad_value=255)
    starts, seen = [], set()
    for r, idxs in enumerate(rows):
        c = int(labels[idxs[0]])
        if c not in seen:
            seen.add(c)
            starts.append((r, c))
    return grid.permute(1, 2, 0).contiguous().numpy(), starts


def class_label(c: int, class_names: Sequence[str] | None) -> str:
    """The name of class ``c``, or ``"class c"`` when the names are unknown (old synset files)."""
    if class_names is not None and 0 <= c < len(class_names) and str(class_names[c]).strip():
        return str(class_names[c])
    return f"class {c}"


def labelled_grid_figure(
    grid: np.ndarray, row_labels: Sequence[tuple[float, str]], font_px: float
) -> "Figure":
    """A figure exactly ``W_labels + W_grid`` by ``H_grid`` pixels (at its dpi): the class-name
    column at the left (right-aligned text centred on the given pixel rows from the top), the
    uint8 ``grid`` drawn unscaled at the right."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import IdentityTransform

    h, w = grid.shape[:2]
    fig = Figure(dpi=LABEL_DPI)
    canvas = FigureCanvasAgg(fig)
    texts = [fig.text(0, 0, s, fontsize=font_px, ha="right", va="center",
                      transform=IdentityTransform()) for _, s in row_labels]
    renderer = canvas.get_renderer()
    text_w = max((t.get_window_extent(renderer).width for t in texts), default=0.0)
    label_w = math.ceil(text_w) + 2 * LABEL_MARGIN
    fig.set_size_inches((label_w + w + 0.25) / LABEL_DPI, (h + 0.25) / LABEL_DPI)  # int() floors
    fig.set_facecolor("white")
    for (y, _), t in zip(row_labels, texts):
        t.set_position((label_w - LABEL_MARGIN, h - y))
    fig.figimage(grid, xo=label_w, yo=0, origin="upper", resize=False)
    return fig


def image_grid_figure(
    images: "torch.Tensor",
    labels: "torch.Tensor",
    mean: Sequence[float] | "torch.Tensor" | float,
    std: Sequence[float] | "torch.Tensor" | float,
    per_row: int | None = None,
    *,
    pad: int = 2,
    scale: int = DEFAULT_SCALE,
    class_names: Sequence[str] | None = None,
    max_per_class: int | None = None,
) -> "Figure":
    """The labelled grid that :func:`save_image_grid` writes, as a figure (same arguments)."""
    import torch

    x = images.detach().to("cpu", dtype=torch.float32)
    y = labels.detach().to("cpu").reshape(-1).numpy()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C in (1, 3), got {tuple(x.shape)}")
    if y.shape[0] != x.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need one label per image, got {y.shape[0]} labels for {x.shape[0]}")
    if not isinstance(scale, int) or scale < 1 or pad < 0:
        raise ValueError(f"scale must be an integer >= 1 and pad >= 0, got {scale=}, {pad=}")
    keep = select_per_class(y, max_per_class)
    x, y = x[torch.from_numpy(keep)], y[keep]
    c, h = x.shape[1], x.shape[2]
    std_, mean_ = (torch.from_numpy(_as_channel_vector(v, c)) for v in (std, mean))
    x = x * std_ + mean_
    pixels = torch.round(torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    grid, starts = tile_grid(pixels, y, per_row, pad, scale)
    tile = h * scale
    font_px = float(min(16, max(9, round(0.2 * tile))))
    row_labels = [(pad + r * (tile + pad) + tile / 2, class_label(k, class_names))
                  for r, k in starts]
    return labelled_grid_figure(grid, row_labels, font_px)


def save_image_grid(
    images: "torch.Tensor",
    labels: "torch.Tensor",
    mean: Sequence[float] | "torch.Tensor" | float,
    std: Sequence[float] | "torch.Tensor" | float,
    path: str | os.PathLike[str],
    per_row: int | None = None,
    *,
    pad: int = 2,
    scale: int = DEFAULT_SCALE,
    class_names: Sequence[str] | None = None,
    max_per_class: int | None = None,
) -> None:
    """Un-normalise ``images`` (N, C, H, W) with per-channel ``mean``/``std``, clamp to [0, 1],
    and save a labelled PNG atomically.

    One row per class (ascending label) named at its left by ``class_names[label]`` ("class k"
    when absent); at most ``per_row`` images per row (default: the largest class size, so each
    class is exactly one row; a larger class wraps onto further rows, labelled once). Only the
    first ``max_per_class`` images of each class are shown when given. Each image is upscaled
    ``scale`` times (nearest neighbour); ``pad`` pixels of white separate the tiles. The PNG is
    :func:`grid_size` high and that wide plus the name column; mode L for C=1, RGB for C=3.
    Raises ``ValueError`` on inconsistent shapes or options.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    fig = image_grid_figure(images, labels, mean, std, per_row, pad=pad, scale=scale,
                            class_names=class_names, max_per_class=max_per_class)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:, :, :3]
    grey = images.shape[1] == 1  # black names on white keep R == G == B
    img = Image.fromarray(np.ascontiguousarray(rgb[:, :, 0] if grey else rgb))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


__all__ = [
    "save_image_grid", "image_grid_figure", "tile_grid", "labelled_grid_figure", "grid_layout",
    "grid_size", "select_per_class", "class_label",
]
