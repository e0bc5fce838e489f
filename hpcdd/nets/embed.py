"""Running a net for its features: precision, no-grad chunked ``embed()``, and the one BatchNorm rule.

Shared by the matching methods (:mod:`hpcdd.distill`), the DREAM sampler and the coresets
(:mod:`hpcdd.select`); it sits below both, so neither imports the other for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

REAL_CHUNK = 128
"""Images per no-grad (or no-graph) forward chunk of a real batch (bench/bench_dm.py, bench/bench_dc.py)."""


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batchnorms(net: nn.Module) -> list[nn.Module]:
    """The net's batch-normalisation layers: every ``nn.modules.batchnorm._BatchNorm`` (BatchNorm1d/2d/3d,
    SyncBatchNorm and their subclasses, whatever their class name). The one rule every method uses."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_batchnorm(net: nn.Module) -> bool:
    """Whether :func:`batchnorms` finds any layer (batch statistics would mix the samples of a batch)."""
    return bool(batchnorms(net))


@torch.no_grad()
def embed_nograd(net: nn.Module, x: torch.Tensor, chunk: int = REAL_CHUNK, precision: str = "fp32") -> torch.Tensor:
    """``net.embed(x)`` without autograd, in chunks (bounded activation memory), as float32.

    Chunking changes nothing for per-sample-normalised nets (GroupNorm) or nets in eval mode;
    with BatchNorm in train mode the statistics would become per-chunk, so callers pass
    ``chunk=len(x)`` for those.
    """
    outs = []
    with autocast(x.device, precision):
        for start in range(0, x.shape[0], chunk):
            outs.append(net.embed(x[start : start + chunk]).float())
    return torch.cat(outs) if outs else x.new_zeros((0,))


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``net`` in eval mode inside the block, each module's own mode restored after
    (BatchNorm then uses its running statistics and leaves them untouched)."""
    modes = [m.training for m in net.modules()]
    net.eval()
    try:
        yield net
    finally:
        for m, mode in zip(net.modules(), modes):
            m.training = mode


__all__ = ["REAL_CHUNK", "autocast", "batchnorms", "has_batchnorm", "embed_nograd", "eval_mode"]
