"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023).

Each iteration draws a fresh randomly initialised net and minimises
``sum_c || mean embed(aug(real_c)) - mean embed(aug(syn_c)) ||^2`` over the synthetic images,
with the same DSA draw applied to a class's real and synthetic batch (siamese).

Faithful to the official code (defaults: 20000 iterations, image SGD lr 1.0 momentum 0.5,
256 real images per class), with two speed-ups that leave the loss unchanged:

* The real images need no gradient, so they are embedded under ``no_grad`` in chunks
  (bounded activation memory) instead of building a graph and detaching it.
* All classes go through the net in **one batched forward** instead of the official per-class
  loop. For nets that normalise per sample (ConvNet's GroupNorm "instancenorm") this is the same
  loss (``tests/test_methods.py`` checks that the two agree). Nets with BatchNorm take the
  official ``'BN' in model`` branch: one forward over every class's real images at once, not
  chunked (the batch statistics span all classes, as in the official code), and one over every
  class's synthetic images (``tests/test_methods.py`` checks this too).
"""

from __future__ import annotations

import torch

from hpcdd.distill.base import ImageDistiller
from hpcdd.nets.embed import embed_nograd, has_batchnorm
from hpcdd.seeding import fresh_net, generator


class DM(ImageDistiller):
    """Declared in :mod:`hpcdd.specs.dm` (parameters: ``DMParams``)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        self.setup_images()

    # -- one iteration ------------------------------------------------------------------------
    def step(self, it: int) -> dict[str, float]:
        cfg = self.cfg
        net = fresh_net(cfg.net, self.data.info, cfg.seed, f"dm-net-{it}", self.device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        real, syn = self.batches(net, generator(cfg.seed, f"dm-dsa-{it}"))
        loss = self.loss(net, real, syn)
        total = self.shared(loss)  # every class's share (one process: the loss itself)
        if not torch.isfinite(total):
            return {"loss": float(total.item())}  # run.py stops on a non-finite loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.images.grad = self.shared(self.images.grad)  # the other ranks' classes' gradients
        self.optimizer.step()
        return {"loss": float(total.item())}

    def loss(self, net, real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
        """Sum over classes of the squared distance between mean embeddings."""
        sizes = [len(r) for r in real]
        real_all = torch.cat(real)
        chunk = len(real_all) if has_batchnorm(net) else self.real_chunk
        emb = embed_nograd(net, real_all, chunk, self.cfg.precision)
        mean_real = torch.stack([e.mean(0) for e in emb.split(sizes)])
        emb_syn = net.embed(torch.cat(syn))
        mean_syn = emb_syn.view(len(syn), -1, emb_syn.shape[-1]).mean(1)
        return ((mean_real - mean_syn) ** 2).sum()

    def loss_per_class(self, net, real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
        """The official per-class loop for per-sample-normalised nets (the reference in tests and
        the 'per-class' variant of bench/bench_dm.py)."""
        loss = torch.zeros((), device=self.device)
        for r, s in zip(real, syn):
            mean_real = embed_nograd(net, r, len(r), self.cfg.precision).mean(0)
            loss = loss + ((mean_real - net.embed(s).mean(0)) ** 2).sum()
        return loss


__all__ = ["DM"]
