"""Stage 1 of the generative methods: DiM's conditional WGAN-GP + ACGAN pretraining, as a
prerequisite artefact (``gan_pretrain``) shared by every ``dim``/``global_local`` run of its config.

Per step, on a real batch ``(x, y)`` (scaled to [-1, 1] like the generator's output), as DiM's
``gen_condense.py``: one generator step (fakes with the real labels, ``L_G = -mean c(G(z, y)) +
aux * CE``), then one critic step (new noise, new uniform random labels, ``-W + lambda * GP +
aux * (CE_real + CE_fake)``); Adam lr 1e-4, betas (0, 0.9) for both. Batches come from a seeded
permutation per epoch (``drop_last``). The artefact ``gan.pt`` holds both nets and both optimiser
states (stage 2 continues from them); ``samples/`` gets a per-class grid at every tenth of the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from hpcdd.config import ExecConfig
from hpcdd.data import DatasetInfo
from hpcdd.gan_losses import d_loss, from_normalized, frozen, g_loss
from hpcdd.io import atomic_torch_save
from hpcdd.nets.gan import build_discriminator, build_generator, class_major_labels, generate, sample_noise
from hpcdd.prereq import PrereqJob
from hpcdd.seeding import generator
from hpcdd.sources import GENERATORS, GeneratorSource
from hpcdd.specs.generative import GanPretrainConfig

ARTEFACT = "gan.pt"
SAMPLES = "samples"
BETAS = (0.0, 0.9)


@GENERATORS.register("dim")
def dim_generator(**kwargs: Any) -> torch.nn.Module:
    """DiM's generator for a generator artefact (weights are loaded afterwards)."""
    return build_generator(**kwargs)


def generator_kwargs(cfg: GanPretrainConfig, info: Any) -> dict[str, Any]:
    return {"num_classes": info.num_classes, "channels": info.channels, "im_size": info.im_size,
            "nz": cfg.nz, "width": cfg.width, "label_mode": cfg.label_mode}


def build_gan(cfg: GanPretrainConfig, info: Any, device: torch.device):
    """(generator, critic, their Adam optimisers) initialised from the pretraining seed."""
    G = build_generator(**generator_kwargs(cfg, info), generator=generator(cfg.seed, "gan-g-init")).to(device)
    D = build_discriminator(info.num_classes, info.channels, info.im_size, width=cfg.width, head=cfg.head,
                            generator=generator(cfg.seed, "gan-d-init")).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=BETAS)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=BETAS)
    return G, D, opt_g, opt_d


def gan_step(G, D, opt_g, opt_d, real, labels, *, num_classes: int, gp_lambda: float, aux_weight: float,
             gen: torch.Generator, extra_g_loss=None) -> dict[str, float]:
    """One generator update then one critic update on a real batch in [-1, 1] (DiM's order).

    ``extra_g_loss(fake) -> (loss, metrics)`` adds stage 2's matching terms to the generator's
    loss, on the same fakes.
    """
    device = real.device
    z = sample_noise(len(labels), G.nz, gen).to(device)
    fake = G(z, labels)
    with frozen(D):
        loss_g, metrics = g_loss(D, fake, labels, aux_weight=aux_weight)
    if extra_g_loss is not None:
        extra, more = extra_g_loss(fake)
        loss_g = loss_g + extra
        metrics.update(more)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    z = sample_noise(len(labels), G.nz, gen).to(device)
    fake_labels = torch.randint(num_classes, (len(labels),), generator=gen).to(device)
    with torch.no_grad():
        fake = G(z, fake_labels)
    loss_d, more = d_loss(D, real, fake, labels, gp_lambda=gp_lambda, aux_weight=aux_weight, generator=gen,
                          fake_labels=fake_labels)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    metrics.update(more)
    metrics["loss"] = metrics["g_loss"] + metrics["d_loss"]  # NaN in either stops the run
    return metrics


def gan_state(job: Any) -> dict[str, Any]:
    """The GAN part of a job's state: both nets, both optimisers, the noise generator."""
    return {"G": job.G.state_dict(), "D": job.D.state_dict(), "opt_g": job.opt_g.state_dict(),
            "opt_d": job.opt_d.state_dict(), "gen": job.gen.get_state()}


def load_gan_state(job: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`gan_state` returned."""
    job.G.load_state_dict(state["G"])
    job.D.load_state_dict(state["D"])
    job.opt_g.load_state_dict(state["opt_g"])
    job.opt_d.load_state_dict(state["opt_d"])
    job.gen.set_state(state["gen"])


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

    @property
    def total_steps(self) -> int:
        return self.config.steps or self.config.epochs * self.per_epoch

    def _batch(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, k = divmod(it, self.per_epoch)
        order = torch.randperm(len(self.bank), generator=generator(self.config.seed, f"gan-epoch-{epoch}"))
        idx = order[k * self.config.batch : (k + 1) * self.config.batch]
        real = from_normalized(self.bank.images(idx), self.info.mean, self.info.std)
        return real.to(self.device), self.bank.labels[idx].to(self.device)

    def step(self, it: int) -> dict[str, float]:
        real, labels = self._batch(it)
        self.G.train()
        return gan_step(self.G, self.D, self.opt_g, self.opt_d, real, labels, num_classes=self.info.num_classes,
                        gp_lambda=self.config.gp_lambda, aux_weight=self.config.aux_weight, gen=self.gen)

    def state_dict(self) -> dict[str, Any]:
        return gan_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_gan_state(self, state)

    def after_step(self, out_dir: Path, done: int) -> None:
        tenth = max(1, self.total_steps // 10)
        if done % tenth == 0 or done == self.total_steps:
            save_samples(self.G, self.info, out_dir / SAMPLES / f"step-{done:08d}.png", seed=self.config.seed)

    def save(self, out_dir: Path) -> None:
        atomic_torch_save(out_dir / ARTEFACT, {
            **self.state_dict(), "kwargs": generator_kwargs(self.config, self.info),
            "config": dataclasses.asdict(self.config), "info": dataclasses.asdict(self.info)})


def save_samples(G, info: Any, path: Path, *, seed: int, ipc: int = 10) -> None:
    """A per-class grid of ``ipc`` generated images (fixed noise, so grids over time compare)."""
    from hpcdd.report.images import save_image_grid

    labels = class_major_labels(info.num_classes, ipc)
    images = generate(G, labels, generator(seed, "gan-samples")).cpu()
    mean, std = torch.tensor([0.5] * info.channels), torch.tensor([0.5] * info.channels)
    save_image_grid(images, labels, mean, std, path, class_names=info.class_names, scale=2)


def load_gan(artefact_dir: Path, device: torch.device):
    """(config, generator, critic, optimisers) of a finished pretraining."""
    from hpcdd.errors import CheckpointError
    from hpcdd.io import try_torch_load

    state = try_torch_load(Path(artefact_dir) / ARTEFACT)
    if not isinstance(state, dict):
        raise CheckpointError(f"{Path(artefact_dir) / ARTEFACT} is missing or corrupt; remove {artefact_dir} "
                              "to rebuild the pretraining")
    cfg = GanPretrainConfig(**state["config"])  # checked again, as when it was built
    info = DatasetInfo(**state["info"])
    G, D, opt_g, opt_d = build_gan(cfg, info, device)
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    return cfg, G, D, opt_g, opt_d


def generator_source(G, kwargs: dict[str, Any], info: Any) -> GeneratorSource:
    return GeneratorSource(G, "dim", kwargs, info.num_classes, G.nz, tuple(info.mean), tuple(info.std))


__all__ = ["GanPretrain", "gan_step", "build_gan", "load_gan", "save_samples", "generator_source", "gan_state",
           "load_gan_state"]
