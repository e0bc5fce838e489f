"""DC (gradient matching, Zhao et al., ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

One iteration (``step``) follows the official ``main.py`` (VICO-UoE/DatasetCondensation):
a fresh net and its SGD, then ``outer_loop`` times

1. (nets with BatchNorm) one train-mode forward of 16 real images per class to update the
   running statistics, then every BatchNorm layer in eval mode for the matching;
2. per class ``c``: the gradient of the cross-entropy of a real batch (``batch_real`` images,
   from the sampler) and of the class's synthetic images w.r.t. the net's parameters, and the
   layer-wise distance between them (:func:`match_loss`); with DSA one augmentation draw per
   class is applied to both batches (siamese, the official seed-per-class);
3. one SGD step of the images on the loss summed over classes;
4. except after the last outer step: ``inner_loop`` epochs of training the net on the current
   synthetic set (shuffled batches of ``batch_train``, per-sample DSA when on).

Speed-ups that leave the maths unchanged (floating-point summation order aside):

* The real gradient is a target: it is computed with ``torch.autograd.grad(loss, params)`` on
  chunks of ``real_chunk`` images (sum of per-chunk sums / n), never building a graph through
  the images and bounding activation memory. Chunking is exact because every net's forward is
  per-sample during matching (per-sample norms; BatchNorm is in eval mode there).
* The synthetic gradients of all classes are computed in one batched pass,
  ``vmap(grad(cross_entropy))`` over the class dimension (``torch.func``), instead of ten small
  double-backward passes; ``batched=False`` keeps the official per-class loop (tests check that
  the two agree). See bench/bench_dc.py for the measured effect.
* The image update differentiates the loss w.r.t. the images only (the official
  ``loss.backward()`` also fills the net's gradients, which the next inner step zeroes).
* The inner loop indexes the synthetic tensor directly (no DataLoader, no deepcopy).

Every random draw comes from ``generator(seed, purpose)``: the net (``dc-net-<it>``), the
matching augmentation (``dc-dsa-<it>``), the inner loop's order and augmentation
(``dc-train-<it>``), the BatchNorm images (``dc-bn-<it>``); the real batches from the sampler.
The net is fresh every iteration, so the images and the image optimizer are the whole state.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpcdd.distill.base import ImageDistiller
from hpcdd.nets.embed import autocast, batchnorms
from hpcdd.seeding import fresh_net, generator
from hpcdd.specs.dc import loops

BN_SIZE_PC = 16
"""Real images per class for the BatchNorm statistics (official ``BNSizePC``)."""
EPS = 1e-6
"""Added to the product of norms in the cosine distances (official 0.000001)."""


def match_loss(gw_syn: Sequence[torch.Tensor], gw_real: Sequence[torch.Tensor], metric: str = "ours",
               batch_dims: int = 0) -> torch.Tensor:
    """The official ``match_loss``: the distance between two lists of per-parameter gradients,
    summed over the leading ``batch_dims`` dimensions (e.g. classes) if any.

    ``ours``: per parameter, conv (4-d) gradients reshaped to (out, in*h*w) and 3-d ones to
    (C, h*w), 2-d used as is, then the sum over rows of ``1 - cos``; 1-d parameters (biases,
    norm weights) contribute 0. ``mse``: the squared distance of all gradients flattened and
    concatenated. ``cos``: ``1 - cos`` of those concatenated vectors.
    """
    if len(gw_syn) != len(gw_real):
        raise ValueError(f"match_loss: {len(gw_syn)} synthetic vs {len(gw_real)} real gradients")
    lead = tuple(gw_real[0].shape[:batch_dims])
    if metric == "ours":
        total = gw_real[0].new_zeros(())
        for gs, gr in zip(gw_syn, gw_real):
            shape = gr.shape[batch_dims:]
            if len(shape) == 1:
                continue
            if len(shape) in (3, 4):
                gr, gs = gr.reshape(*lead, shape[0], -1), gs.reshape(*lead, shape[0], -1)
            dot = (gr * gs).sum(-1)
            den = torch.linalg.vector_norm(gr, dim=-1) * torch.linalg.vector_norm(gs, dim=-1) + EPS
            total = total + (1 - dot / den).sum()
        return total
    vs = torch.cat([g.reshape(*lead, -1) for g in gw_syn], dim=-1)
    vr = torch.cat([g.reshape(*lead, -1) for g in gw_real], dim=-1)
    if metric == "mse":
        return ((vs - vr) ** 2).sum()
    if metric == "cos":
        den = torch.linalg.vector_norm(vr, dim=-1) * torch.linalg.vector_norm(vs, dim=-1) + EPS
        return (1 - (vr * vs).sum(-1) / den).sum()
    raise ValueError(f"unknown dis_metric {metric!r}")


class DC(ImageDistiller):
    """Declared in :mod:`hpcdd.specs.dc` as ``dc`` (dsa off) and ``dsa`` (dsa on)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        self.outer_loop, self.inner_loop = loops(cfg.ipc, self.params.outer_loop, self.params.inner_loop)
        self.setup_images()
        self.batched = True
        """Synthetic gradients of all classes in one ``vmap`` pass (False: the per-class loop)."""

    # -- one iteration ----------------------------------------------------------------------------
    def step(self, it: int) -> dict[str, float]:
        cfg, p = self.cfg, self.params
        net = fresh_net(cfg.net, self.data.info, cfg.seed, f"dc-net-{it}", self.device)
        net.train()
        opt_net = torch.optim.SGD(net.parameters(), lr=p.lr_net, momentum=p.momentum_net)
        gens = {k: generator(cfg.seed, f"dc-{k}-{it}") for k in ("dsa", "train", "bn")}
        has_bn = bool(batchnorms(net))
        losses: list[float] = []
        metrics: dict[str, float] = {}
        for ol in range(self.outer_loop):
            if has_bn:
                self.bn_statistics(net, gens["bn"])
            real, syn = self.batches(net, gens["dsa"])
            loss = self.match(net, real, syn)
            losses.append(float(self.shared(loss).item()))  # every class's share
            if not math.isfinite(losses[-1]):
                return {"loss": losses[-1]}  # run.py stops on a non-finite loss
            (grad,) = torch.autograd.grad(loss, self.images)
            self.optimizer.zero_grad(set_to_none=True)
            self.images.grad = self.shared(grad)  # the other ranks' classes' gradients
            self.optimizer.step()
            if ol == self.outer_loop - 1:
                break
            metrics["train_loss"] = self.train_net(net, opt_net, gens["train"])
        n = self.num_classes
        return {"loss": sum(losses) / (n * self.outer_loop), "loss_first": losses[0] / n,
                "loss_last": losses[-1] / n, **metrics}

    @torch.no_grad()
    def bn_statistics(self, net: nn.Module, gen: torch.Generator) -> None:
        """Official BN handling: a train-mode forward of BN_SIZE_PC real images per class (the
        running statistics take one EMA step), then every BatchNorm in eval mode. Which layers
        are BatchNorm: :func:`hpcdd.nets.embed.batchnorms` (by type, the rule DM uses too; the
        official code matches 'BatchNorm' in the class name, the same layers for its nets)."""
        idx = torch.cat([self.data.sample(c, BN_SIZE_PC, gen) for c in range(self.num_classes)])
        net.train()
        net(self.data.images(idx).to(self.device))
        for m in batchnorms(net):
            m.eval()

    # -- gradient matching --------------------------------------------------------------------------
    def match(self, net: nn.Module, real: list[torch.Tensor], syn: list[torch.Tensor],
              batched: bool | None = None) -> torch.Tensor:
        """Sum over classes of ``match_loss(grad syn_c, grad real_c)``, differentiable in the
        synthetic images."""
        batched = self.batched if batched is None else batched
        gw_real = self.real_grads(net, real)
        gw_syn = self.syn_grads_batched(net, syn) if batched else self.syn_grads_loop(net, syn)
        return match_loss(gw_syn, gw_real, self.params.dis_metric, batch_dims=1)

    def real_grads(self, net: nn.Module, real: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per parameter, ``(C, *shape)``: each class's mean cross-entropy gradient, no graph (the
        classes are ``self.classes``, in order)."""
        params = [q for q in net.parameters()]
        per_class = []
        for c, x in zip(self.classes, real):
            acc: list[torch.Tensor] | None = None
            for start in range(0, len(x), self.real_chunk):
                xb = x[start : start + self.real_chunk]
                with autocast(self.device, self.cfg.precision):
                    out = net(xb)
                target = torch.full((len(xb),), c, dtype=torch.long, device=self.device)
                loss = F.cross_entropy(out.float(), target, reduction="sum") / len(x)
                gs = torch.autograd.grad(loss, params)
                acc = list(gs) if acc is None else [a.add_(g) for a, g in zip(acc, gs)]
            per_class.append(acc)
        return [torch.stack(gs) for gs in zip(*per_class)]

    def syn_grads_loop(self, net: nn.Module, syn: list[torch.Tensor]) -> list[torch.Tensor]:
        """The official per-class double-backward loop (the reference for the batched pass)."""
        params = [q for q in net.parameters()]
        per_class = []
        for c, s in zip(self.classes, syn):
            target = torch.full((len(s),), c, dtype=torch.long, device=self.device)
            loss = F.cross_entropy(net(s), target)
            per_class.append(torch.autograd.grad(loss, params, create_graph=True))
        return [torch.stack(gs) for gs in zip(*per_class)]

    def syn_grads_batched(self, net: nn.Module, syn: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every class's synthetic gradient in one ``vmap(grad(...))`` over the class dimension.

        Exact because the matching forward is per-sample (the classes never mix); the result
        keeps the graph to the synthetic images.
        """
        from torch.func import functional_call, grad, vmap

        names = [n for n, _ in net.named_parameters()]
        params = {n: q.detach() for n, q in net.named_parameters()}
        buffers = dict(net.named_buffers())
        x = torch.stack(syn)
        y = torch.tensor(list(self.classes), device=self.device).view(-1, 1).expand(len(syn), x.shape[1])

        def loss_fn(p: dict[str, torch.Tensor], xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(net, (p, buffers), (xc,)), yc)

        g = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
        return [g[n] for n in names]

    # -- inner loop ------------------------------------------------------------------------------
    def train_net(self, net: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
        """``inner_loop`` epochs of SGD on the synthetic set (the official ``epoch('train', ...)``
        with ``aug=dsa``); returns the mean cross-entropy of the last epoch."""
        net.train()
        x_all = self.images.detach()
        y_all = self.labels.to(self.device)
        n, bt = len(x_all), self.params.batch_train
        total = torch.zeros((), device=self.device)
        for _ in range(self.inner_loop):
            perm = torch.randperm(n, generator=gen).to(self.device)
            total = torch.zeros((), device=self.device)
            for start in range(0, n, bt):
                idx = perm[start : start + bt]
                x = x_all[idx]
                if self.dsa is not None:
                    x = self.dsa(x, gen, batchmode=False)
                loss = F.cross_entropy(net(x), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
        return float(total.item()) / n


__all__ = ["DC", "match_loss", "BN_SIZE_PC"]
