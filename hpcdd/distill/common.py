"""Helpers shared by several methods."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from hpcdd.seeding import generator


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@torch.no_grad()
def embed_nograd(
    net: nn.Module, x: torch.Tensor, chunk: int = 128, precision: str = "fp32"
) -> torch.Tensor:
    """``net.embed(x)`` without autograd, in chunks (bounded activation memory), as float32.

    Chunking changes nothing for per-sample-normalised nets (GroupNorm); with BatchNorm in train
    mode the statistics would become per-chunk, so callers pass ``chunk=len(x)`` for those.
    """
    outs = []
    with autocast(x.device, precision):
        for start in range(0, x.shape[0], chunk):
            outs.append(net.embed(x[start : start + chunk]).float())
    return torch.cat(outs) if outs else x.new_zeros((0,))


def initial_images(bank, cfg, init: str, device: torch.device) -> torch.Tensor:
    """``cfg.ipc`` images per class, class-major, on the CPU.

    ``real``: random real images; ``noise``: standard normal; ``kmeans``: per class, the real
    images nearest the k-means centroids (k = ipc) of ``embed()`` features of a seeded fresh
    ``cfg.net`` (DREAM's initialisation).
    """
    info, ipc = bank.info, cfg.ipc
    gen = generator(cfg.seed, "init")
    if init == "noise":
        shape = (info.num_classes * ipc, info.channels, info.im_size, info.im_size)
        return torch.randn(shape, generator=gen)
    if init == "kmeans":
        from hpcdd.select.dream import kmeans_init_indices

        idx = kmeans_init_indices(bank, cfg, device)
        return bank.images(idx)
    parts = []
    for c in range(info.num_classes):
        idx = bank.sample(c, ipc, gen)
        parts.append(bank.images(idx))
    return torch.cat(parts)


def class_labels(num_classes: int, ipc: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(ipc)
