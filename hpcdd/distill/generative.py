"""Stage 2 of ``dim`` and ``global_local``: distil a dataset into the pretrained generator.

Each step (``global_local``; ``dim`` is the same with lambda_local = 0), as DiM's
``pool_match.py`` plus Li et al.'s local term:

1. The pool model: one of ``pool`` (ConvNet3 / ResNet10 / ResNet18) drawn per epoch (or every
   ``pool_every`` steps, for short budgets), freshly
   initialised, then trained with SGD (lr 0.01, momentum 0.9, wd 5e-4) on ``pool_warmup`` random
   real batches (per-sample DSA) before every generator step.
2. A class-balanced real batch ``x, y`` from the sampler (random, or DREAM's representatives of
   each class under the pool model's embedding) and ``G(z, y)`` with the same labels.
3. One DSA draw (``match_aug``) augments both; the pool model (train mode, separate forwards, as
   DiM) gives logits and the ``local_layers`` feature map of each. The generator minimises
   ``L = L_G + lambda_global * MSE(log_softmax) + lambda_local * MSE(features)``, then the critic
   takes its WGAN-GP/ACGAN step (both with Adam lr 5e-6, continuing stage 1's optimiser states).

Deviations, on purpose: generated images are mapped to the dataset's normalisation before the
pool model (the official code mixes normalisations); the real batch is class-balanced
(``match_batch // classes`` per class) so a sampler can choose it; ``match_aug`` is one DSA op per
draw, not DiffAug's all-ops sequence; the pool is hpcdd's nets (no avg-pool ResNet variants), trained with the run's DSA strategy
per sample (DiM: colour and crop, all ops).
The artefact is the generator (``generator.pt``); evaluation draws ipc images per class from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hpcdd.augment import DSA
from hpcdd.distill.base import Distiller
from hpcdd.distill.gan import (
    gan_state, gan_step, generator_kwargs, generator_source, load_gan, load_gan_state,
)
from hpcdd.gan_losses import from_normalized, frozen, global_logit_loss, local_feature_loss, to_normalized
from hpcdd.seeding import fresh_net, generator
from hpcdd.sources import Source, SyntheticSet
from hpcdd.specs.generative import real_per_class

POOL_MOMENTUM, POOL_WEIGHT_DECAY = 0.9, 5e-4


def logits_and_features(net: torch.nn.Module, x: torch.Tensor, layer: str | None) -> tuple[torch.Tensor, Any]:
    """One forward through a staged net: the logits and the activation of ``layer`` (or None)."""
    feat = None
    h = x
    for name, stage in net.body.named_children():
        h = stage(h)
        if name == layer:
            feat = h
    return net.classifier(h.flatten(1)), feat


class GenerativeDistiller(Distiller):
    """``dim`` / ``global_local`` (parameters: :class:`hpcdd.specs.generative.GenerativeParams`)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        p, info = self.params, data.info
        self.info = info
        self.gan_cfg, self.G, self.D, self.opt_g, self.opt_d = load_gan(self.artefacts["gan"], self.device)
        for opt in (self.opt_g, self.opt_d):  # stage 2 continues the optimiser states at a new lr
            for group in opt.param_groups:
                group["lr"] = p.match_lr
        self.per_class = real_per_class(cfg, info.num_classes)
        self.steps_per_model = p.pool_every or max(1, len(data) // (self.per_class * info.num_classes))
        self.dsa = DSA(p.match_aug)
        self.pool_dsa = DSA(cfg.dsa_strategy) if cfg.dsa else None
        self.gen = generator(cfg.seed, "generative")
        self.model: torch.nn.Module | None = None
        self.model_epoch = -1
        self.model_arch = ""
        self.model_opt: torch.optim.Optimizer | None = None

    # -- the pool model ------------------------------------------------------------------------
    def _pool_model(self, it: int) -> torch.nn.Module:
        epoch = it // self.steps_per_model
        if self.model is None or epoch != self.model_epoch:
            cfg, p = self.cfg, self.params
            pick = int(torch.randint(len(p.pool), (1,), generator=generator(cfg.seed, f"pool-{epoch}")))
            self._new_model(p.pool[pick], epoch)
        return self.model

    def _new_model(self, arch: str, epoch: int) -> None:
        self.model_arch, self.model_epoch = arch, epoch
        self.model = fresh_net(arch, self.info, self.cfg.seed, f"pool-net-{epoch}", self.device)
        self.model_opt = torch.optim.SGD(self.model.parameters(), lr=self.params.pool_lr,
                                         momentum=POOL_MOMENTUM, weight_decay=POOL_WEIGHT_DECAY)

    def _train_pool(self, model: torch.nn.Module) -> None:
        model.train()
        n = self.per_class * self.info.num_classes
        for _ in range(self.params.pool_warmup):
            idx = torch.randint(len(self.data), (n,), generator=self.gen)
            x = self.data.images(idx).to(self.device)
            if self.pool_dsa is not None:
                x = self.pool_dsa(x, self.gen, batchmode=False)
            loss = F.cross_entropy(model(x), self.data.labels[idx].to(self.device))
            self.model_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.model_opt.step()

    # -- one generator step --------------------------------------------------------------------
    def step(self, it: int) -> dict[str, float]:
        p, info = self.params, self.info
        model = self._pool_model(it)
        self._train_pool(model)
        chosen = self.sampler.batch_indices(range(info.num_classes), self.per_class, net=model)
        idx = torch.cat(chosen)
        real = self.data.images(idx).to(self.device)
        labels = self.data.labels[idx].to(self.device)
        layer = p.layer_of(self.model_arch) if p.lambda_local > 0 else None
        draw = self.dsa.draw(1, self.gen, batchmode=True, im_size=real.shape[-1])
        with torch.no_grad():
            logits_real, feat_real = logits_and_features(model, self.dsa.apply(real, draw), layer)

        def matching(fake_tanh: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            fake = self.dsa.apply(to_normalized(fake_tanh, info.mean, info.std), draw)
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
        real_gan = from_normalized(real, info.mean, info.std)
        metrics = gan_step(self.G, self.D, self.opt_g, self.opt_d, real_gan, labels, num_classes=info.num_classes,
                           gp_lambda=self.gan_cfg.gp_lambda, aux_weight=self.gan_cfg.aux_weight, gen=self.gen,
                           extra_g_loss=matching)
        metrics["pool_model"] = float(p.pool.index(self.model_arch))
        return metrics

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {**gan_state(self), "model_epoch": self.model_epoch, "model_arch": self.model_arch}
        if self.model is not None:
            state["model"] = self.model.state_dict()
            state["model_opt"] = self.model_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_gan_state(self, state)
        self.model = None
        if "model" in state:
            self._new_model(state["model_arch"], int(state["model_epoch"]))
            self.model.load_state_dict(state["model"])
            self.model_opt.load_state_dict(state["model_opt"])

    # -- what it produces --------------------------------------------------------------------------
    def source(self) -> Source:
        return generator_source(self.G, generator_kwargs(self.gan_cfg, self.info), self.info)

    def synthetic(self, ipc: int | None = None) -> SyntheticSet:
        return self.source().sample(ipc or 10, generator(self.cfg.seed, "generative-synthetic"))
