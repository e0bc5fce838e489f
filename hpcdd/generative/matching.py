"""Stage 2 of ``dim`` and ``global_local``: distil a dataset into the pretrained generator.

Each step (``global_local``; ``dim`` is the same with lambda_local = 0), as DiM's
``pool_match.py`` plus Li et al.'s local term:

1. The pool model (:class:`hpcdd.generative.pool.PoolModel`): one of ``pool`` (null: DiM's for
   the image size, ConvNet3 / ResNet10 / ResNet18 with the ImageNet stem at 32 px and below) drawn
   per epoch (or every ``pool_every`` steps, for short budgets), freshly initialised, then trained
   on ``pool_warmup`` real batches (``pool_aug`` per sample) before every generator step.
2. A class-balanced real batch ``x, y`` from the sampler (random, or DREAM's representatives of
   each class under the pool model's embedding) and ``G(z, y)`` with the same labels.
3. One draw of ``match_aug`` (all its ops together, DiffAug-style) augments both; the pool model
   (train mode, separate forwards, as DiM) gives logits and the ``local_layers`` feature map of
   each. The generator minimises ``L = L_G + lambda_global * MSE(log_softmax) + lambda_local *
   MSE(features)``, then the critic takes its WGAN-GP/ACGAN step (both with Adam lr 5e-6,
   continuing stage 1's optimiser states).

Deviations, on purpose: generated images are mapped to the dataset's normalisation before the
pool model (the official code mixes normalisations); the real batch is class-balanced
(``match_batch // classes`` per class) so a sampler can choose it; the pool has no avg-pool ResNet
variants. The artefact is the generator (``generator.pt``); evaluation draws ipc images per class
from it. The split of each step's time (pool training vs generator and critic) goes to the
run's ``done.json`` and result row (:meth:`GenerativeDistiller.info`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from hpcdd.artefact import Source, SyntheticSet
from hpcdd.augment import DSA
from hpcdd.distill.base import Distiller
from hpcdd.generative.gan import gan_state, gan_step, generator_source, load_gan, load_gan_state
from hpcdd.generative.losses import from_normalized, frozen, global_logit_loss, local_feature_loss, to_normalized
from hpcdd.generative.parallel import Shard, sync_batchnorm
from hpcdd.generative.pool import PoolModel, logits_and_features
from hpcdd.nets import build as build_net
from hpcdd.nets.embed import has_batchnorm
from hpcdd.runtime.dist import dist_of
from hpcdd.seeding import generator
from hpcdd.specs.generative import pool_models, real_per_class


class GenerativeDistiller(Distiller):
    """``dim`` / ``global_local`` (parameters: :class:`hpcdd.specs.generative.GenerativeParams`)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        p, info = self.params, data.info
        self.gan_cfg, _, self.G, self.D, self.opt_g, self.opt_d = load_gan(self.artefacts["gan"], self.device)
        for opt in (self.opt_g, self.opt_d):  # stage 2 continues the optimiser states at a new lr
            for group in opt.param_groups:
                group["lr"] = p.match_lr
        self.per_class = real_per_class(cfg, info.num_classes)
        batch = self.per_class * info.num_classes
        self.pool = PoolModel(pool_models(p.pool, info.im_size), data, seed=cfg.seed, device=self.device,
                              lr=p.pool_lr, warmup=p.pool_warmup, batch=batch, aug=p.pool_aug,
                              steps_per_model=p.pool_every or max(1, len(data) // batch))
        self.aug = DSA(p.match_aug, chain=True)
        self.gen = generator(cfg.seed, "generative")
        self.seconds = {"pool": 0.0, "gan": 0.0, "steps": 0}
        self.shard = self._shard(batch)

    def _shard(self, batch: int) -> Shard | None:
        """Several processes: each rank's share of every batch is a block of whole classes (the
        batch is class-major), its generator's BatchNorm synchronised, its sampler told its
        classes. A pool with BatchNorm nets (their train-mode statistics would be the slice's) runs
        replicated instead, as one process on every rank."""
        dist, info = dist_of(self.accelerator), self.data.info
        pool = pool_models(self.params.pool, info.im_size)
        if not dist.several or any(has_batchnorm(build_net(a, info.channels, info.num_classes, info.im_size))
                                   for a in pool):
            return None
        classes = dist.shard(info.num_classes, f"classes of {self.cfg.dataset}")
        self.sampler.shard(dist, classes)
        self.G = sync_batchnorm(self.G, self.device.type == "cuda")
        return Shard(dist, batch)

    def step(self, it: int) -> dict[str, float]:
        t0 = time.perf_counter()
        model = self.pool.current(it)
        self.pool.train()
        t1 = time.perf_counter()
        metrics = self._gan_step(model)
        t2 = time.perf_counter()
        metrics.update(pool_model=float(self.pool.pool.index(self.pool.arch)), pool_seconds=t1 - t0,
                       gan_seconds=t2 - t1)
        self.seconds["pool"] += t1 - t0
        self.seconds["gan"] += t2 - t1
        self.seconds["steps"] += 1
        return metrics

    def _gan_step(self, model: torch.nn.Module) -> dict[str, float]:
        """The generator step with the matching terms, then the critic step."""
        p, info = self.params, self.data.info
        idx = torch.cat(self.sampler.batch_indices(range(info.num_classes), self.per_class, net=model))
        if self.shard is not None:  # this rank's classes (the batch is class-major)
            idx = self.shard.take(idx)
        real = self.data.images(idx).to(self.device)
        labels = self.data.labels[idx].to(self.device)
        layer = p.layer_of(self.pool.arch) if p.lambda_local > 0 else None
        draw = self.aug.draw(1, self.gen, batchmode=True, im_size=real.shape[-1])
        with torch.no_grad():
            logits_real, feat_real = logits_and_features(model, self.aug.apply(real, draw), layer)

        def matching(fake_tanh: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            fake = self.aug.apply(to_normalized(fake_tanh, info.mean, info.std), draw)
            with frozen(model):  # gradients flow to the generator only
                logits_fake, feat_fake = logits_and_features(model, fake, layer)
            glob = global_logit_loss(logits_real, logits_fake)
            total = p.lambda_global * glob
            out = {"global": glob.item()}
            if layer is not None:
                loc = local_feature_loss(feat_real, feat_fake, pairing=p.local_pairing, labels=labels)
                total = total + p.lambda_local * loc
                out["local"] = loc.item()
            return total, out

        self.G.train()
        return gan_step(self.G, self.D, self.opt_g, self.opt_d, from_normalized(real, info.mean, info.std), labels,
                        num_classes=info.num_classes, gp_lambda=self.gan_cfg.gp_lambda,
                        aux_weight=self.gan_cfg.aux_weight, gen=self.gen, extra_g_loss=matching,
                        precision=p.gan_precision, shard=self.shard)

    def state_dict(self) -> dict[str, Any]:
        return {**gan_state(self), "pool": self.pool.state_dict(), "seconds": dict(self.seconds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_gan_state(self, state)
        self.pool.load_state_dict(state["pool"])
        self.seconds = dict(state["seconds"])

    def info(self) -> dict[str, Any]:
        """Where stage 2's time went: pool-model training vs the generator and critic step."""
        n = max(1, self.seconds["steps"])
        return {"pool_seconds": round(self.seconds["pool"], 3), "gan_seconds": round(self.seconds["gan"], 3),
                "pool_s_per_step": round(self.seconds["pool"] / n, 4),
                "gan_s_per_step": round(self.seconds["gan"] / n, 4)}

    def source(self) -> Source:
        return generator_source(self.G, self.gan_cfg, self.data.info)

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return self.source().sample(ipc or 10, generator(self.cfg.seed, "generative-synthetic"))
