"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021), single-op ('S') mode, and
DiffAug's all-ops chain.

Each call picks ONE op of the '_'-separated strategy uniformly at random ('color'
= brightness, saturation, contrast in sequence); with ``chain=True`` every op of the strategy
is applied, in the order written (DiffAug as DiM uses it: ``color_crop_cutout`` on each matching
batch, ``color_crop`` per sample for its pool models). Random numbers are drawn on the
CPU from an explicit ``torch.Generator`` into an :class:`AugDraw`, which can be
applied to several batches (real and synthetic) for the Siamese use::

    d = dsa.draw(1, g, batchmode=True, im_size=h)
    dsa.apply(x_real, d); dsa.apply(x_syn, d)

Params of size 1 (batchmode) broadcast to any batch; size ``n`` means per-sample.
All ops are differentiable in the input images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from hpcdd.specs.dsa import FULL_STRATEGY, NO_FLIP_DATASETS, OPS, check_strategy, default_strategy  # noqa: F401 (re-exported)

@dataclass(frozen=True)
class DSAParams:
    """Augmentation strengths of the official DSA code (``ParamDiffAug``)."""

    scale: float = 1.2
    rotate: float = 15.0  # degrees
    crop: float = 0.125  # max translation, as a fraction of the side
    cutout: float = 0.5  # side of the zeroed square, as a fraction of the side
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    flip_prob: float = 0.5


@dataclass(frozen=True)
class AugDraw:
    """One random augmentation: the op name and its params (size 1 or n along dim 0)."""

    op: str
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def _rand(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g)


def _draw_color(n: int, g: torch.Generator, p: DSAParams, im_size: int) -> dict[str, torch.Tensor]:
    return {
        "brightness": (_rand(n, g) - 0.5) * p.brightness,  # additive shift
        "saturation": _rand(n, g) * p.saturation,  # factor on the deviation from the channel mean
        "contrast": _rand(n, g) + p.contrast,  # factor on the deviation from the image mean
    }


def _draw_crop(n: int, g: torch.Generator, p: DSAParams, im_size: int) -> dict[str, torch.Tensor]:
    shift = int(im_size * p.crop + 0.5)
    return {
        "tx": torch.randint(-shift, shift + 1, (n,), generator=g),  # along H (dim 2)
        "ty": torch.randint(-shift, shift + 1, (n,), generator=g),  # along W (dim 3)
    }


def _draw_cutout(n: int, g: torch.Generator, p: DSAParams, im_size: int) -> dict[str, torch.Tensor]:
    size = int(im_size * p.cutout + 0.5)
    high = im_size + (1 - size % 2)  # official: centre in [0, size + (1 - cut % 2))
    start_x = torch.randint(0, high, (n,), generator=g) - size // 2
    start_y = torch.randint(0, high, (n,), generator=g) - size // 2
    return {"x0": start_x, "y0": start_y, "size": torch.full((n,), size, dtype=torch.long)}


def _draw_flip(n: int, g: torch.Generator, p: DSAParams, im_size: int) -> dict[str, torch.Tensor]:
    return {"flip": _rand(n, g) < p.flip_prob}


def _draw_scale(n: int, g: torch.Generator, p: DSAParams, im_size: int) -> dict[str, torch.Tensor]:
    lo, hi = 1.0 / p.scale, p.scale
    return {"sx": _rand(n, g) * (hi - lo) + lo, "sy": _rand(n, g) * (hi - lo) + lo}


def _draw_rotate(n: int, g: torch.Generator, p: DSAParams, im_size: int) -> dict[str, torch.Tensor]:
    return {"angle": (_rand(n, g) - 0.5) * 2.0 * p.rotate / 180.0 * math.pi}


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Params (k,) -> (k, 1, 1, 1) on x's device/dtype, broadcastable against x."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _apply_color(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    x = x + _col(p["brightness"], x)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * _col(p["saturation"], x) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _col(p["contrast"], x) + mean


def _apply_crop(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Translate by (tx, ty) pixels with zero fill: out[i, j] = x[i + tx, j + ty]."""
    b, c, h, w = x.shape
    tx, ty = p["tx"], p["ty"]
    if tx.numel() == 1:  # batchmode: one shift for all -> pad + slice
        sx, sy = int(tx.item()), int(ty.item())
        pad_h, pad_w = abs(sx), abs(sy)
        xp = F.pad(x, [pad_w, pad_w, pad_h, pad_h])
        return xp[:, :, pad_h + sx : pad_h + sx + h, pad_w + sy : pad_w + sy + w]
    xp = F.pad(x, [1, 1, 1, 1])  # index 0 / h+1 (w+1) read the zero border
    rows = (torch.arange(h).view(1, h) + tx.view(-1, 1) + 1).clamp_(0, h + 1).to(x.device)
    cols = (torch.arange(w).view(1, w) + ty.view(-1, 1) + 1).clamp_(0, w + 1).to(x.device)
    out = torch.gather(xp, 2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2))
    return torch.gather(out, 3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _apply_cutout(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    h, w = x.shape[2], x.shape[3]
    x0, y0, size = p["x0"].view(-1, 1), p["y0"].view(-1, 1), p["size"].view(-1, 1)
    i, j = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    in_rows = (i >= x0) & (i < x0 + size)  # (k, h)
    in_cols = (j >= y0) & (j < y0 + size)  # (k, w)
    hole = in_rows.unsqueeze(2) & in_cols.unsqueeze(1)  # (k, h, w)
    mask = (~hole).to(device=x.device, dtype=x.dtype).unsqueeze(1)
    return x * mask


def _apply_flip(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    flip = p["flip"]
    if flip.numel() == 1:
        return x.flip(3) if bool(flip.item()) else x
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample x with per-sample (k, 2, 3) affine matrices, k in {1, B}."""
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _apply_scale(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    sx, sy = p["sx"], p["sy"]
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta)


def _apply_rotate(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    a = p["angle"]
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    return _affine(x, theta)


Drawer = Callable[[int, torch.Generator, DSAParams, int], dict[str, torch.Tensor]]
Applier = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
_OP_FNS: dict[str, tuple[Drawer, Applier]] = {
    "color": (_draw_color, _apply_color),
    "crop": (_draw_crop, _apply_crop),
    "cutout": (_draw_cutout, _apply_cutout),
    "flip": (_draw_flip, _apply_flip),
    "scale": (_draw_scale, _apply_scale),
    "rotate": (_draw_rotate, _apply_rotate),
}


CHAIN = "+"
"""Joins the ops of a chained draw (``AugDraw.op`` ``"color+crop+cutout"``)."""


class DSA:
    """DSA with one uniformly chosen op per draw (the official 'S' mode), or with every op of the
    strategy in order (``chain=True``: DiffAug's all-ops mode)."""

    def __init__(self, strategy: str, params: DSAParams = DSAParams(), *, chain: bool = False) -> None:
        check_strategy(strategy)
        self.strategy = strategy
        self.params = params
        self.chain = chain
        self.ops: tuple[str, ...] = () if strategy == "none" else tuple(strategy.split("_"))

    def draw(self, n: int, generator: torch.Generator, *, batchmode: bool, im_size: int) -> AugDraw:
        """Draw an op and its params: size 1 if ``batchmode`` (shared by all samples), else ``n``."""
        if generator.device.type != "cpu":
            raise ValueError("DSA draws on the CPU; pass a CPU torch.Generator")
        if not self.ops:
            return AugDraw("none", {})
        k = 1 if batchmode else int(n)
        if k < 1:
            raise ValueError(f"cannot draw augmentation params for n={n}")
        if self.chain:
            params: dict[str, torch.Tensor] = {}
            for op in self.ops:  # the ops' parameter names are distinct
                params.update(_OP_FNS[op][0](k, generator, self.params, im_size))
            return AugDraw(CHAIN.join(self.ops), params)
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))]
        return AugDraw(op, _OP_FNS[op][0](k, generator, self.params, im_size))

    def apply(self, x: torch.Tensor, draw: AugDraw) -> torch.Tensor:
        """Apply ``draw`` to the (B, C, H, W) batch ``x``; differentiable in ``x``."""
        if draw.op == "none":
            return x
        sizes = {int(v.shape[0]) for v in draw.params.values()}
        if not sizes <= {1, x.shape[0]}:
            raise ValueError(
                f"AugDraw params of size {sorted(sizes)} do not fit a batch of {x.shape[0]}"
            )
        for op in draw.op.split(CHAIN):
            x = _OP_FNS[op][1](x, draw.params)
        return x

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator, *, batchmode: bool = False
    ) -> torch.Tensor:
        """Draw (per sample unless ``batchmode``) and apply in one go."""
        d = self.draw(x.shape[0], generator, batchmode=batchmode, im_size=x.shape[-1])
        return self.apply(x, d)
