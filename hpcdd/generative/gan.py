"""The conditional GAN shared by both stages: building generator and critic with their Adam
optimisers, one GAN step (DiM's order: a generator update, then a critic update), their state,
and loading a finished pretraining.

Per step, on a real batch ``(x, y)`` scaled to [-1, 1] like the generator's output, as DiM's
``gen_condense.py`` / ``pool_match.py``: the generator's fakes take the real labels, ``L_G = -mean
c(G(z, y)) + aux * CE`` (plus stage 2's matching terms on the same fakes); then the critic sees new
noise with new uniform random labels, ``-W + lambda * GP + aux * (CE_real + CE_fake)``. Adam with
betas (0, 0.9) for both.

``precision="bf16"`` runs the generator and critic forwards (and the gradient penalty's double
backward) under CPU/GPU bf16 autocast; parameters, optimiser states and the matching terms stay
fp32. With several processes :func:`gan_step` takes a :class:`hpcdd.generative.parallel.Shard`: the
batch given is this rank's slice, the draws are made for the whole batch, and the gradients and
metrics are averaged over the ranks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import torch

from hpcdd.data import DatasetInfo
from hpcdd.errors import CheckpointError
from hpcdd.generative.losses import d_loss, frozen, g_loss
from hpcdd.generative.nets import build_discriminator, build_generator, sample_noise
from hpcdd.generative.source import GeneratorSource
from hpcdd.io import try_torch_load
from hpcdd.seeding import generator
from hpcdd.specs.generative import GanPretrainConfig

ARTEFACT = "gan.pt"
BETAS = (0.0, 0.9)

ExtraLoss = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def generator_kwargs(cfg: GanPretrainConfig, info: Any) -> dict[str, Any]:
    """The generator's constructor arguments (saved in the artefacts, so any process rebuilds it)."""
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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision == "bf16"``; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def gan_step(G, D, opt_g, opt_d, real, labels, *, num_classes: int, gp_lambda: float, aux_weight: float,
             gen: torch.Generator, extra_g_loss: ExtraLoss | None = None,
             precision: str = "fp32", shard: Any = None) -> dict[str, float]:
    """One generator update then one critic update on a real batch in [-1, 1] (DiM's order).

    ``extra_g_loss(fake) -> (loss, metrics)`` adds stage 2's matching terms to the generator's
    loss, on the same fakes (handed over in fp32, outside autocast). ``shard``: ``real`` and
    ``labels`` are this rank's slice of the batch (:mod:`hpcdd.generative.parallel`).
    """
    device = real.device
    n = len(labels) if shard is None else shard.batch
    take = (lambda t: t) if shard is None else shard.take
    z = take(sample_noise(n, G.nz, gen)).to(device)
    with autocast(device, precision):
        fake = G(z, labels)
        with frozen(D):
            loss_g, metrics = g_loss(D, fake, labels, aux_weight=aux_weight)
    if extra_g_loss is not None:
        extra, more = extra_g_loss(fake.float())
        loss_g = loss_g + extra
        metrics.update(more)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    if shard is not None:
        shard.average_grads(G)
    opt_g.step()
    z = take(sample_noise(n, G.nz, gen)).to(device)
    fake_labels = take(torch.randint(num_classes, (n,), generator=gen)).to(device)
    with autocast(device, precision):
        with torch.no_grad():
            fake = G(z, fake_labels)
        loss_d, more = d_loss(D, real, fake, labels, gp_lambda=gp_lambda, aux_weight=aux_weight, generator=gen,
                              fake_labels=fake_labels, rows=None if shard is None else (n, shard.part))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    if shard is not None:
        shard.average_grads(D)
    opt_d.step()
    metrics.update(more)
    metrics["loss"] = metrics["g_loss"] + metrics["d_loss"]  # NaN in either stops the run
    return metrics if shard is None else shard.average(metrics)


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


def load_gan(artefact_dir: Path, device: torch.device):
    """(config, dataset info, generator, critic, optimisers) of a finished pretraining."""
    path = Path(artefact_dir) / ARTEFACT
    state = try_torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is missing or corrupt; remove {artefact_dir} to rebuild the pretraining")
    cfg = GanPretrainConfig(**state["config"])  # checked again, as when it was built
    info = DatasetInfo(**state["info"])
    G, D, opt_g, opt_d = build_gan(cfg, info, device)
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    return cfg, info, G, D, opt_g, opt_d


def generator_source(G, cfg: GanPretrainConfig, info: Any) -> GeneratorSource:
    """The evaluation source of a trained generator (what ``generator.pt`` holds)."""
    return GeneratorSource(G, generator_kwargs(cfg, info), info.num_classes, G.nz, tuple(info.mean), tuple(info.std))


__all__ = ["build_gan", "gan_step", "gan_state", "load_gan_state", "load_gan", "generator_source",
           "generator_kwargs", "autocast", "ARTEFACT"]
