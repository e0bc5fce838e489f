"""Helpers shared by several methods: the initial synthetic images and their labels.

Running a net for its features (precision, chunked no-grad ``embed()``, the BatchNorm rule) lives
one layer down, in :mod:`hpcdd.nets.embed`, which the samplers share.
"""

from __future__ import annotations

import torch

from hpcdd.nets.embed import autocast, embed_nograd, has_batchnorm  # noqa: F401 (moved there; kept for importers)
from hpcdd.seeding import generator


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
