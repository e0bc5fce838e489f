"""N fresh nets of one architecture trained as ONE batched module (grouped convolutions).

:func:`group_nets` turns N nets into one module whose layers hold the N models side by side:
``Conv2d(C, O)`` becomes ``Conv2d(N*C, N*O, groups=N)``, a norm over C channels one over N*C
(GroupNorm: N*G groups), ``Linear`` a per-model batched matmul (:class:`GroupedLinear`).
Activations are laid out ``(B, N*C, H, W)`` with model m's channels in block m (flattened:
``(B, N*D)``, model-major), so channel-wise layers (ReLU, pooling, flatten) run unchanged and model
m's block computes what model m alone computes. BatchNorm needs no care: its batch statistics and
running statistics are per channel, so each model keeps its own. SGD is elementwise, so one SGD over
the concatenated parameters is N SGDs. ``hpcdd.evaluate.train_grouped`` trains such a module with
each model's own data order, augmentation draws (:func:`augment_many`) and images, as
``train_from_scratch`` trains one model; :func:`split_states` gives each model's ``state_dict``
back.

Exactness (``tests/test_evaluate_ensemble.py``): on CPU at one thread in deterministic mode
(torch 2.14.1) a model trained in a group is bit-identical to it trained alone for convnet3,
convnet3_bn, convnet4(_bn), mlp and vgg11; alexnet, lenet and resnet10/18 differ by float rounding
(oneDNN picks other kernels for some grouped convs: one input channel per group, LeNet's 6/16
channels, 1x1 stride-2 shortcuts), and so does every net at more threads (reductions split
differently). On a GPU nothing is bitwise.

A module outside the known layer types raises :class:`NotEnsemblable` (the caller trains those
nets one by one); a forward that breaks the channel layout is caught by a probe forward.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpcdd.augment import DSA, AugDraw
from hpcdd.seeding import generator

_CHANNELWISE = (nn.ReLU, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)
"""Stateless layers that act on each channel (or each feature) alone: kept as they are."""


class NotEnsemblable(Exception):
    """These nets cannot be grouped into one module (the message says why)."""


class _GroupedLinearFn(torch.autograd.Function):
    """N linear layers as batched matmuls, whose backward computes the weight gradient as
    ``grad^T @ x`` per model, the product ``F.linear``'s backward takes (``x^T @ grad``,
    autograd's choice for ``bmm``, rounds differently)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
        b, out = x.shape[0], weight.shape[0] // n
        xs = x.reshape(b, n, -1).transpose(0, 1)  # (n, b, in)
        w = weight.view(n, out, -1)  # (n, out, in)
        ctx.save_for_backward(xs, w)
        ctx.has_bias = bias is not None
        y = torch.baddbmm(bias.view(n, 1, out), xs, w.transpose(1, 2)) if bias is not None else \
            torch.bmm(xs, w.transpose(1, 2))
        return y.transpose(0, 1).reshape(b, n * out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        xs, w = ctx.saved_tensors
        n, out = w.shape[0], w.shape[1]
        b = grad.shape[0]
        gs = grad.reshape(b, n, out).transpose(0, 1)  # (n, b, out)
        grad_x = torch.bmm(gs, w).transpose(0, 1).reshape(b, -1)
        grad_w = torch.bmm(gs.transpose(1, 2), xs).reshape(n * out, -1)
        grad_b = gs.sum(1).reshape(-1) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class GroupedLinear(nn.Module):
    """``n`` ``Linear(in_features, out_features)`` on model-major input ``(B, n*in)`` -> ``(B, n*out)``.

    ``weight`` is ``(n*out, in)``: model m's weight is rows ``m*out .. (m+1)*out``, as for a
    grouped conv, so every parameter of a grouped module splits the same way (dim 0 in n chunks).
    """

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GroupedLinearFn.apply(x, self.weight, self.bias, self.n)


def _grouped_leaf(m: nn.Module, n: int) -> nn.Module:
    """The grouped version of one parameter-owning or stateless leaf (stateless ones are kept)."""
    t = type(m)
    if t is nn.Conv2d and m.padding_mode == "zeros" and isinstance(m.padding, tuple):
        return nn.Conv2d(n * m.in_channels, n * m.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, n * m.groups, m.bias is not None)
    if t is nn.Linear:
        return GroupedLinear(n, m.in_features, m.out_features, m.bias is not None)
    if t is nn.GroupNorm:
        return nn.GroupNorm(n * m.num_groups, n * m.num_channels, m.eps, m.affine)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        return t(n * m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if t is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
        return m
    if t in _CHANNELWISE:
        return m
    raise NotEnsemblable(f"it has a layer the ensemble cannot group ({t.__name__})")


def group_nets(nets: Sequence[nn.Module], probe_shape: tuple[int, int, int]) -> nn.Module:
    """One module holding ``nets`` (same architecture) side by side, on their device.

    ``probe_shape`` is one input image's ``(C, H, W)``: a forward on two probe images checks that
    each model's block of the grouped output is that model's own output. Raises
    :class:`NotEnsemblable` for unknown layer types or a forward that breaks the layout.
    """
    n = len(nets)
    grouped = copy.deepcopy(nets[0])
    for name, module in list(grouped.named_modules()):
        if any(True for _ in module.children()):
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                raise NotEnsemblable(f"{type(module).__name__} owns tensors and has children")
            continue
        with torch.device("meta"):  # no storage, no random draws: the weights come from ``nets``
            new = _grouped_leaf(module, n)
        if new is not module:
            parent, _, attr = name.rpartition(".")
            setattr(grouped.get_submodule(parent), attr, new)
    states = [net.state_dict() for net in nets]
    device = next(iter(states[0].values())).device if states[0] else torch.device("cpu")
    grouped.to_empty(device=device)
    grouped.load_state_dict({k: v if v.dim() == 0 else torch.cat([s[k] for s in states])
                             for k, v in states[0].items()})
    _check_layout(grouped, nets, probe_shape, device)
    return grouped.train(nets[0].training)


@torch.no_grad()
def _check_layout(grouped: nn.Module, nets: Sequence[nn.Module], shape: tuple[int, int, int],
                  device: torch.device) -> None:
    n, c = len(nets), shape[0]
    x = torch.randn(2, n * c, *shape[1:], generator=generator(0, "ensemble-layout-probe")).to(device)
    modes = [net.training for net in nets]
    grouped.eval()
    try:
        out = grouped(x)
        for m, net in enumerate(nets):
            own = net.eval()(x[:, m * c:(m + 1) * c])
            block = out.view(2, n, -1)[:, m]
            if block.shape != own.shape or not torch.allclose(block, own, rtol=1e-3, atol=1e-4):
                raise NotEnsemblable("its forward does not keep each model's channels apart")
    except RuntimeError as e:
        raise NotEnsemblable(f"its grouped forward fails ({str(e).splitlines()[0]})") from None
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


def split_states(grouped: nn.Module, n: int) -> list[dict[str, torch.Tensor]]:
    """Each model's ``state_dict`` (names as in one net) from a module made by :func:`group_nets`."""
    state = grouped.state_dict()
    return [{k: v.clone() if v.dim() == 0 else v.chunk(n)[m].clone() for k, v in state.items()}
            for m in range(n)]


def augment_many(dsa: DSA, xs: Sequence[torch.Tensor], gens: Sequence[torch.Generator]) -> list[torch.Tensor]:
    """``[dsa(x, g, batchmode=False) for x, g in zip(xs, gens)]``, applied once per drawn op.

    Each model draws from its own generator, exactly as alone; the models that drew the same op
    are augmented in one call (the ops act on each sample alone, so the result is the same).
    """
    draws = [dsa.draw(len(x), g, batchmode=False, im_size=x.shape[-1]) for x, g in zip(xs, gens)]
    out: list[torch.Tensor] = list(xs)
    for op in dict.fromkeys(d.op for d in draws):
        members = [m for m, d in enumerate(draws) if d.op == op]
        params = {key: torch.cat([draws[m].params[key] for m in members]) for key in draws[members[0]].params}
        joined = dsa.apply(torch.cat([xs[m] for m in members]), AugDraw(op, params))
        for m, part in zip(members, joined.split([len(xs[m]) for m in members])):
            out[m] = part
    return out


def ensemble_loss(logits: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over models of each model's mean cross-entropy; ``logits`` is ``(B, n*classes)``.

    The sum gives each model's parameters exactly its own loss's gradient."""
    n, b = len(labels), len(labels[0])
    per = F.cross_entropy(logits.view(b, n, -1).transpose(0, 1).reshape(n * b, -1),
                          torch.stack(list(labels)).reshape(-1), reduction="none")
    return per.view(n, b).mean(1).sum()


__all__ = ["GroupedLinear", "NotEnsemblable", "augment_many", "ensemble_loss", "group_nets", "split_states"]
