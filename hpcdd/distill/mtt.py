"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

Declared in :mod:`hpcdd.specs.mtt` (parameters, the paper's settings, the ``mtt_expert``
prerequisite); the experts are :mod:`hpcdd.distill.mtt_experts`.

One iteration, as the official ``distill.py``:

1. draw an expert ``k`` and a start epoch ``t`` below ``max_start_epoch``; the student starts from
   the expert's parameters ``theta*_t``, the target is ``theta*_{t+M}`` (M = ``expert_epochs``);
2. unroll ``syn_steps`` student SGD steps on the synthetic set, each on the next ``batch_syn``
   images of a seeded permutation (a new permutation when it runs out), DSA with per-sample
   parameters on every minibatch, step size the learnable ``syn_lr``; the steps are functional
   (:func:`torch.func.functional_call` on a template net) and keep their graph
   (``create_graph``), so the loss reaches the pixels through every step;
3. loss ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2``; one SGD step on the
   pixels (``lr_img``) and one on ``syn_lr`` (``lr_lr``), both momentum 0.5.

Every random draw of iteration ``it`` derives from the run seed and ``it``, so the state is the
images, ``syn_lr`` and both optimisers: resume is bit-identical on CPU.

**Memory** grows linearly in ``syn_steps x batch_syn`` (the graph of every unrolled step is kept):
:func:`estimate_memory_gb` estimates it from the net's activation size per image, with constants
fitted by ``bench/bench_mtt_memory.py``; :func:`preflight` refuses a run whose estimate exceeds
``exec.memory_limit_gb`` before it writes any file, as it refuses ``batch_syn`` larger than the
synthetic set and an unusable ``buffer_dir``.

**DREAM with trajectories.** MTT's distillation draws no real images (its student trains on the
synthetic set); real images enter only through the experts. So ``sampler: dream`` changes how
the experts are trained (class-balanced batches of DREAM's representative samples, see
:mod:`hpcdd.distill.mtt_experts`) and ``init: kmeans`` starts the images from DREAM's
representatives. ``launch/mtt_dream_fmnist.yaml`` compares it with random sampling at the same
budget (same expert epochs and steps, same iterations).

**Seam for multi-process runs (issue 21).** :meth:`MTT.student_grads` is the only place a
minibatch's gradient is taken. A data-parallel version splits ``x`` across ranks and sums the
per-rank gradients with :func:`hpcdd.generative.parallel.sum_over_ranks` (differentiable, so the
outer backward still reaches every rank's images); ``_minibatches`` is the per-rank plan.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from hpcdd.augment import DSA
from hpcdd.config import ExecConfig, RunConfig
from hpcdd.distill.base import ImageDistiller
from hpcdd.distill.common import class_labels, initial_images
from hpcdd.distill.mtt_experts import load_buffer
from hpcdd.errors import ConfigError
from hpcdd.seeding import fresh_net, generator
from hpcdd.specs.mtt import check_buffer, read_buffer, settings

GB = 2**30
MEMORY_FIT = {"per_image_step": 1.42, "per_param_step": 1.34, "per_image": 2.3, "base_gb": 0.95}
"""Estimated peak = base + syn_steps x (per_image_step x batch_syn x A + per_param_step x P) +
per_image x batch_syn x A, with A the net's activation bytes per image and P its parameter bytes:
the graph of every unrolled step is kept, and the outer backward adds transients. Least squares
over bench/bench_mtt_memory.py's CPU measurements (Fashion-MNIST, ConvNet3, ipc 1/10/50;
within 10 % of the measured rise); on a GPU the caching allocator differs (measure there);
base: a process with torch and Fashion-MNIST loaded."""


class MTT(ImageDistiller):
    """Declared in :mod:`hpcdd.specs.mtt` (parameters: ``MttParams``)."""

    def __init__(self, cfg, data, accelerator, sampler, artefacts=None) -> None:
        super().__init__(cfg, data, accelerator, sampler, artefacts)
        self.s = settings(cfg)
        self.buffer = load_buffer(cfg, self.artefacts)
        info = data.info
        self.num_classes = info.num_classes
        self.labels = class_labels(self.num_classes, cfg.ipc)
        self.batch_syn = self.s.batch_syn or len(self.labels)
        init = initial_images(data, cfg, self.params.init, self.device)
        self.images = init.to(self.device).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=self.s.lr_img, momentum=self.params.momentum_img)
        self.syn_lr = torch.tensor(self.s.lr_teacher, device=self.device).requires_grad_(True)
        self.lr_optimizer = torch.optim.SGD([self.syn_lr], lr=self.s.lr_lr, momentum=self.params.momentum_img)
        self.net = fresh_net(cfg.net, info, cfg.seed, "mtt-student", self.device)  # the architecture only
        self.net.train()
        self.names = [n for n, _ in self.net.named_parameters()]
        self.net_buffers = dict(self.net.named_buffers())
        self.dsa = DSA(cfg.dsa_strategy) if cfg.dsa and cfg.dsa_strategy != "none" else None
        self._labels_dev = self.labels.to(self.device)

    # -- one iteration ------------------------------------------------------------------------
    def step(self, it: int) -> dict[str, float]:
        gen = generator(self.cfg.seed, f"mtt-{it}")
        k = int(torch.randint(len(self.buffer), (1,), generator=gen))
        start = int(torch.randint(self.s.max_start_epoch, (1,), generator=gen))
        theta0 = self._flat(self.buffer.params(k, start))
        target = self._flat(self.buffer.params(k, start + self.s.expert_epochs))
        loss = self.match(theta0, target, gen)
        metrics = {"loss": float(loss.item()), "syn_lr": float(self.syn_lr.item()), "expert": float(k),
                   "start_epoch": float(start)}
        if not torch.isfinite(loss):
            return metrics  # run.py stops on a non-finite loss
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.lr_optimizer.step()
        return metrics

    def _flat(self, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ConfigError(f"an expert epoch file lacks parameter {missing[0]!r} of net {self.cfg.net}")
        return [params[n].to(self.device, torch.float32) for n in self.names]

    def match(self, theta0: list[torch.Tensor], target: list[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """The normalised parameter distance after ``syn_steps`` unrolled student steps."""
        start = [p.clone().requires_grad_(True) for p in theta0]
        final = self.unroll(start, gen)
        num = sum(((p - t) ** 2).sum() for p, t in zip(final, target))
        den = sum(((p - t) ** 2).sum() for p, t in zip(theta0, target))
        return num / den

    def unroll(self, params: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
        """``syn_steps`` SGD steps of the student from ``params``, graph kept. Buffers (BatchNorm
        statistics) start fresh every iteration, as the official fresh student net's."""
        buffers = {k: v.clone() for k, v in self.net_buffers.items()}
        for idx in self._minibatches(gen):
            x = self.images[idx]
            if self.dsa is not None:
                x = self.dsa(x, gen, batchmode=False)
            grads = self.student_grads(params, buffers, x, self._labels_dev[idx])
            params = [p - self.syn_lr * g for p, g in zip(params, grads)]
        return params

    def _minibatches(self, gen: torch.Generator) -> list[torch.Tensor]:
        """Index sets of the ``syn_steps`` student steps (official: pop from a split permutation)."""
        out: list[torch.Tensor] = []
        chunks: list[torch.Tensor] = []
        for _ in range(self.s.syn_steps):
            if not chunks:
                chunks = list(torch.randperm(len(self.labels), generator=gen).split(self.batch_syn))
            out.append(chunks.pop().to(self.device))
        return out

    def student_grads(self, params: list[torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Cross-entropy gradient of the student at ``params`` on one minibatch, differentiable."""
        out = functional_call(self.net, {**dict(zip(self.names, params)), **buffers}, (x,))
        return torch.autograd.grad(F.cross_entropy(out, y), params, create_graph=True)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "syn_lr": self.syn_lr.detach().cpu().clone(),
                "lr_optimizer": self.lr_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.syn_lr.copy_(state["syn_lr"].to(self.device))
        self.lr_optimizer.load_state_dict(state["lr_optimizer"])


# ----------------------------------------------------------------------------------------------
# checks before the run writes a file, and the memory estimate


def activation_elements(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Elements of every leaf module's output for ONE image of ``shape`` (C, H, W)."""
    total = 0

    def hook(_m, _inp, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out[0].numel()

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            net(torch.zeros((2, *shape)))
    finally:
        for h in handles:
            h.remove()
    return total


def estimate_memory_gb(cfg: RunConfig, info: Any) -> float:
    """Estimated peak memory (GB) of an mtt run (see ``MEMORY_FIT``)."""
    s = settings(cfg)
    net = fresh_net(cfg.net, info, 0, "mtt-estimate")
    act = activation_elements(net, (info.channels, info.im_size, info.im_size)) * 4
    params = sum(p.numel() for p in net.parameters()) * 4
    batch = s.batch_syn or info.num_classes * int(cfg.ipc)
    per_step = MEMORY_FIT["per_image_step"] * batch * act + MEMORY_FIT["per_param_step"] * params
    return MEMORY_FIT["base_gb"] + (s.syn_steps * per_step + MEMORY_FIT["per_image"] * batch * act) / GB


def preflight(cfg: RunConfig, dataset: Any, exec_cfg: ExecConfig) -> None:
    """Refuse (``ConfigError``, one line) before the run writes any file: ``batch_syn`` larger than
    the synthetic set, a ``buffer_dir`` of another dataset or net or too few epochs, and an
    estimated peak memory above ``exec_cfg.memory_limit_gb``."""
    info = dataset.info
    s = settings(cfg)
    n = info.num_classes * int(cfg.ipc)
    if s.batch_syn is not None and s.batch_syn > n:
        raise ConfigError(f"batch_syn {s.batch_syn} is larger than the synthetic set ({n} images: "
                          f"{info.num_classes} classes x ipc {cfg.ipc})")
    if cfg.params.get("buffer_dir"):
        found = read_buffer(cfg.params["buffer_dir"])
        check_buffer(cfg, [c for _, c in found], cfg.params["buffer_dir"])
    limit = exec_cfg.memory_limit_gb
    if limit is not None:
        est = estimate_memory_gb(cfg, info)
        if est > limit:
            raise ConfigError(
                f"mtt: estimated peak memory {est:.1f} GB (syn_steps {s.syn_steps} x batch_syn "
                f"{s.batch_syn or n}, net {cfg.net}) exceeds memory_limit_gb {limit:g}; lower syn_steps or batch_syn")


__all__ = ["MTT", "preflight", "estimate_memory_gb", "activation_elements", "MEMORY_FIT"]
