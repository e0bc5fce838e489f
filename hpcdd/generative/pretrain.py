"""Stage 1 of the generative methods: DiM's conditional WGAN-GP + ACGAN pretraining, as a
prerequisite artefact (``gan_pretrain``) shared by every ``cgan``/``dim``/``global_local`` run of
its config.

Batches come from a seeded permutation per epoch (``drop_last``); each step is
:func:`hpcdd.generative.gan.gan_step` (lr 1e-4, betas (0, 0.9), as DiM). The artefact ``gan.pt``
holds both nets and both optimiser states (stage 2 continues from them); ``samples/`` gets a
per-class grid at every tenth of the run (skipped, with a line in log.txt, where matplotlib or
torchvision is missing: they are diagnostics, not results).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from hpcdd.config import ExecConfig
from hpcdd.generative.gan import ARTEFACT, build_gan, gan_state, gan_step, generator_kwargs, load_gan_state
from hpcdd.generative.losses import from_normalized
from hpcdd.generative.nets import class_major_labels, generate
from hpcdd.imagegrid import save_image_grid
from hpcdd.generative.parallel import shard_for, sync_batchnorm
from hpcdd.io import atomic_torch_save
from hpcdd.runtime.dist import dist_of
from hpcdd.prereq import PrereqJob
from hpcdd.rundir import log
from hpcdd.seeding import generator
from hpcdd.specs.generative import GanPretrainConfig

SAMPLES = "samples"


class GanPretrain(PrereqJob):
    """``gan_pretrain``: a resumable, steppable WGAN-GP/ACGAN training job."""

    def __init__(self, config: GanPretrainConfig, accelerator: Any, exec_cfg: ExecConfig) -> None:
        super().__init__(config, accelerator, exec_cfg)
        from hpcdd.data import load_dataset

        self.device = accelerator.device
        data = load_dataset(config.dataset, root=exec_cfg.data_root, download=exec_cfg.download,
                            im_size=config.im_size)
        self.bank, self.info = data.train, data.info
        self.per_epoch = len(self.bank) // config.batch
        if self.per_epoch < 1:
            raise ValueError(f"gan batch {config.batch} exceeds the {len(self.bank)} training images")
        self.G, self.D, self.opt_g, self.opt_d = build_gan(config, self.info, self.device)
        self.gen = generator(config.seed, "gan-noise")
        self.shard = shard_for(dist_of(accelerator), config.batch, "gan batch")
        """Several processes: this rank's slice of every batch, the generator's BatchNorm synced."""
        if self.shard is not None:
            self.G = sync_batchnorm(self.G, self.device.type == "cuda")
        self.no_grids = False

    @property
    def total_steps(self) -> int:
        return self.config.steps or self.config.epochs * self.per_epoch

    def _batch(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(it, self.per_epoch)
        order = torch.randperm(len(self.bank), generator=generator(self.config.seed, f"gan-epoch-{epoch}"))
        idx = order[k * self.config.batch : (k + 1) * self.config.batch]
        if self.shard is not None:
            idx = self.shard.take(idx)
        real = from_normalized(self.bank.images(idx), self.info.mean, self.info.std)
        return real.to(self.device), self.bank.labels[idx].to(self.device)

    def step(self, it: int) -> dict[str, float]:
        real, labels = self._batch(it)
        self.G.train()
        return gan_step(self.G, self.D, self.opt_g, self.opt_d, real, labels, num_classes=self.info.num_classes,
                        gp_lambda=self.config.gp_lambda, aux_weight=self.config.aux_weight, gen=self.gen,
                        precision=self.config.precision, shard=self.shard)

    def state_dict(self) -> dict[str, Any]:
        return gan_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_gan_state(self, state)

    def after_step(self, out_dir: Path, done: int) -> None:
        tenth = max(1, self.total_steps // 10)
        if (done % tenth == 0 or done == self.total_steps) and not self.no_grids:
            try:
                save_samples(self.G, self.info, out_dir / SAMPLES / f"step-{done:08d}.png", seed=self.config.seed)
            except ImportError as e:  # a node without matplotlib/torchvision: the grids are diagnostics only
                self.no_grids = True
                log(out_dir, f"sample grids skipped: {e}")

    def save(self, out_dir: Path) -> None:
        atomic_torch_save(out_dir / ARTEFACT, {
            **self.state_dict(), "kwargs": generator_kwargs(self.config, self.info),
            "config": dataclasses.asdict(self.config), "info": dataclasses.asdict(self.info)})


def save_samples(G, info: Any, path: Path, *, seed: int, ipc: int = 10) -> None:
    """A per-class grid of ``ipc`` generated images (fixed noise, so grids over time compare)."""
    labels = class_major_labels(info.num_classes, ipc)
    images = generate(G, labels, generator(seed, "gan-samples")).cpu()
    mean, std = torch.tensor([0.5] * info.channels), torch.tensor([0.5] * info.channels)
    save_image_grid(images, labels, mean, std, path, class_names=info.class_names, scale=2)


__all__ = ["GanPretrain", "save_samples", "SAMPLES"]
