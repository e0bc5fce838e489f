"""Data-parallel GAN steps (issue 21): both stages of the generative methods on several processes.

Each rank takes a contiguous ``1/W`` slice of every batch (:class:`Shard`). The noise, the critic's
labels and the gradient-penalty mixing weights are drawn for the whole batch on every rank, from
the same generator as one process draws them, and each rank keeps its slice; so the union of what
the ranks see is what one process sees. Every loss is a mean over its slice, the slices are equal,
and the gradients of generator and critic are averaged over the ranks before each optimiser step:
every rank takes the step one process takes on the whole batch. (This is the gradient averaging
that ``DistributedDataParallel`` does; it is done here directly because the GAN step freezes the
critic's parameters during the generator's update, which DDP's reducer does not allow.)

BatchNorm in the generator must see the whole batch: :func:`sync_batchnorm` swaps its layers for
``torch.nn.SyncBatchNorm`` on GPU, and on CPU (where that does not run) for
:class:`GlooBatchNorm`, whose batch mean and variance are summed over the ranks by
:func:`sum_over_ranks`, an all-reduce that autograd differentiates (the gradient of a sum over
ranks is the sum of the ranks' gradients). It stands in for
``torch.distributed.nn.functional.all_reduce``, which PyTorch deprecates with a FutureWarning on
every rank's stderr, and whose suggested replacement is a private module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.runtime.dist import Dist


@dataclasses.dataclass(frozen=True)
class Shard:
    """This rank's slice of every batch of ``batch`` rows."""

    dist: Dist
    """The ranks sharing the batch."""
    batch: int
    """Rows of the whole batch (divisible by the world size)."""

    @property
    def part(self) -> slice:
        size = self.batch // self.dist.world
        return slice(self.dist.rank * size, (self.dist.rank + 1) * size)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-batch tensor."""
        return rows[self.part]

    def average_grads(self, module: nn.Module) -> None:
        """Average the gradients of ``module``'s parameters over the ranks (in place)."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.sum_(flat).div_(self.dist.world)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def average(self, metrics: dict[str, float]) -> dict[str, float]:
        """Per-slice means averaged over the ranks: the whole batch's means, the same on every rank."""
        keys = sorted(metrics)
        values = self.dist.sum_(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                                             device=self.dist.device()))
        return {k: float(v) / self.dist.world for k, v in zip(keys, values.tolist())}


def shard_for(dist: Dist, batch: int, what: str) -> Shard | None:
    """The :class:`Shard` of a ``batch``-row batch (``what``: its name in the error), or None in
    a world of one; a world size that does not divide the batch is a ``ConfigError``."""
    if not dist.several:
        return None
    if batch % dist.world:
        raise ConfigError(f"{dist.world} processes cannot share a {what} of {batch} evenly; "
                          f"use a number of processes that divides {batch}")
    return Shard(dist, batch)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) over the default process group, differentiable: the backward pass is
    the same all-reduce of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td

        out = tensor.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        td.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks of the default process group, as a new tensor that
    gradients flow through (every rank must call it, in the same order)."""
    return _SumOverRanks.apply(tensor)


class GlooBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the whole batch across the ranks of
    the default process group (CPU/gloo; any dimension >= 2). Mean first, then the variance
    around it (two all-reduces, like BatchNorm's two passes); eval mode uses running statistics
    and calls no collective."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1, *([1] * (x.dim() - 2))]
        dtype, x = x.dtype, x.float()  # statistics in fp32, as autocast runs BatchNorm
        count = sum_over_ranks(torch.tensor([x.numel() / x.shape[1]], device=x.device))
        mean = sum_over_ranks(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = sum_over_ranks((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
        out = centred / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(dtype)


def sync_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """``module`` with every BatchNorm layer synchronised over the ranks: ``SyncBatchNorm`` on GPU,
    :class:`GlooBatchNorm` on CPU. The layers keep their Parameter and buffer objects (an
    optimiser built before still holds them) and their state-dict names."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlooBatchNorm):
            swapped = GlooBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            for key, value in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(swapped, key, value)  # the same Parameter objects: optimisers keep them
            swapped.train(child.training)
            setattr(module, name, swapped)
        else:
            sync_batchnorm(child, cuda)
    return module


__all__ = ["Shard", "shard_for", "sum_over_ranks", "GlooBatchNorm", "sync_batchnorm"]
