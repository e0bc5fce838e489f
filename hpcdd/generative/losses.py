"""Losses of the generative distillation methods: WGAN-GP + ACGAN pretraining (DiM), DiM's
global logit matching and Li et al.'s local feature matching. Pure functions of tensors and
modules; the optimisers, the pool model and the loop belong to the caller.

Notation: ``D(x, y) = (c(x), l(x))`` is the critic (B,) and the class logits (B, K) of
:class:`hpcdd.generative.nets.Discriminator` (``y`` is used only by a projection critic);
``G(z, y)`` the generator; CE the mean cross-entropy.

The official recipe (``vimar-gu/DiM``: ``gen_condense.py`` pretraining, ``pool_match.py``
matching) is collected in :class:`DimRecipe`. Per real batch ``(x, y)`` of size B it runs
**one generator step, then one critic step** (n_critic = 1, generator first):

- G step: ``z ~ N(0, I)``, the fakes use the real batch's labels ``y`` (same order), loss
  :func:`g_loss` (+ in stage 2 the matching terms, on the same fakes);
- D step: new noise and new uniform random labels ``y'``, fakes under ``no_grad``, loss
  :func:`d_loss` with ``fake_labels=y'``.

Stage 2 (matching) keeps both GAN losses and both optimisers (Adam lr 5e-6) and adds
``0.01 * global_logit_loss`` computed by a pool model that is trained for 16 real batches
before every generator step; Li et al. add ``0.001 * local_feature_loss`` on a mid layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DimRecipe:
    """DiM's official hyper-parameters (defaults of ``gen_condense.py`` / ``pool_match.py``)."""

    nz: int = 100
    """Noise dimension (the first ``num_classes`` dims carry the one-hot label)."""
    width: int = 196
    """Channels of every generator/discriminator layer."""
    pretrain_epochs: int = 150
    """Stage-1 (GAN) epochs over the real training set."""
    pretrain_batch: int = 128
    """Stage-1 batch size (drop_last=True)."""
    pretrain_lr: float = 1e-4
    """Stage-1 Adam learning rate for G and D."""
    betas: tuple[float, float] = (0.0, 0.9)
    """Adam betas for G and D, both stages."""
    gp_lambda: float = 10.0
    """WGAN-GP weight."""
    aux_weight: float = 1.0
    """ACGAN class cross-entropy weight (G, and D on real and on fake)."""
    n_critic: int = 1
    """Critic steps per generator step (G step first, then D step, per real batch)."""
    match_epochs: int = 100
    """Stage-2 (matching) epochs."""
    match_batch: int = 64
    """Stage-2 batch size."""
    match_lr: float = 5e-6
    """Stage-2 Adam learning rate for G and D (optimiser states carried over from stage 1)."""
    logit_weight: float = 0.01
    """Weight of :func:`global_logit_loss` (hard-coded in ``matchloss``; ``--match-coeff`` is ignored)."""
    local_weight: float = 0.001
    """Weight of :func:`local_feature_loss` (Li et al., 2024)."""
    match_aug: str = "color_crop_cutout"
    """Augmentation of the concatenated real+fake batch before matching: DiM's DiffAug applies
    ALL of brightness, saturation, contrast, then crop, then cutout (not one random op as in
    DSA), with one parameter draw for the whole batch (``batch=True``: siamese)."""
    pool_models: tuple[str, ...] = ("convnet", "resnet10", "resnet18", "resnet10_ap", "resnet18_ap")
    """Pool drawn once per epoch (``random.choice``); a fresh model each epoch."""
    pool_steps: int = 16
    """Real batches the pool model trains on before every generator step."""
    pool_lr: float = 0.01
    """Pool model SGD learning rate."""
    pool_momentum: float = 0.9
    """Pool model SGD momentum."""
    pool_weight_decay: float = 5e-4
    """Pool model SGD weight decay."""
    pool_aug: str = "color_crop"
    """Pool-model training augmentation: ``match_aug`` minus cutout (``--mixup-net cut``),
    all ops applied, parameters drawn per sample (``batch=False``)."""


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set ``requires_grad=False`` on ``module``'s parameters (restored on exit).

    Use around the generator step so ``backward`` neither computes nor accumulates
    gradients for the critic (or the pool model): the official code computes them and
    discards them with the next ``zero_grad``.
    """
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def gradient_penalty(
    D: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator,
    *,
    labels: torch.Tensor | None = None,
    rows: tuple[int, slice] | None = None,
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al., 2017, eq. 3), without the lambda:

    ``E[(||grad_x c(x_hat)||_2 - 1)^2]``, ``x_hat = a*real + (1-a)*fake``, ``a ~ U(0, 1)`` per
    sample (shared by all pixels), drawn from ``generator`` (its own device, then moved).
    ``real`` and ``fake`` are detached; the result is differentiable in ``D``'s parameters
    (``create_graph=True``). ``labels`` (the real batch's) are passed to ``D`` when given,
    for a projection critic; without them ``D`` is called with the images alone. ``rows =
    (batch, part)``: ``real`` and ``fake`` are the rows ``part`` of a ``batch``-row batch (one rank's
    share, :mod:`hpcdd.generative.parallel`); the weights are drawn for the whole batch and sliced.
    """
    alpha = torch.rand(real.shape[0] if rows is None else rows[0], generator=generator, device=generator.device)
    if rows is not None:
        alpha = alpha[rows[1]]
    alpha = alpha.to(device=real.device, dtype=real.dtype).view(-1, *([1] * (real.dim() - 1)))
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    critic, _ = D(x_hat, labels) if labels is not None else D(x_hat)
    (grad,) = torch.autograd.grad(critic.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).square().mean()


def d_loss(
    D: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor,
    *,
    gp_lambda: float,
    aux_weight: float,
    generator: torch.Generator,
    fake_labels: torch.Tensor | None = None,
    fake_aux: bool = True,
    rows: tuple[int, slice] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Critic loss of DiM's pretraining (WGAN-GP + ACGAN):

    ``L_D = mean c(fake) - mean c(real) + gp_lambda * GP
            + aux_weight * (CE(l(real), labels) + [fake_aux] CE(l(fake), fake_labels))``

    ``fake`` is detached (no gradient reaches the generator). ``fake_labels`` default to
    ``labels``; DiM draws fresh uniform labels for the critic's fakes. Real and fake go
    through ``D`` in one batch (LayerNorm is per sample, so this equals two passes).
    Metrics: ``d_loss``, ``wasserstein`` (mean c(real) - mean c(fake)), ``gp``,
    ``d_aux_real``, ``d_aux_fake``, ``d_acc_real``.
    """
    fake = fake.detach()
    fake_labels = labels if fake_labels is None else fake_labels
    n = real.shape[0]
    both = torch.cat([real, fake])
    both_labels = torch.cat([labels, fake_labels])
    critic, logits = D(both, both_labels)
    wasserstein = critic[:n].mean() - critic[n:].mean()
    gp = gradient_penalty(D, real, fake, generator, labels=labels, rows=rows)
    aux_real = F.cross_entropy(logits[:n], labels)
    aux_fake = F.cross_entropy(logits[n:], fake_labels)
    loss = -wasserstein + gp_lambda * gp + aux_weight * (aux_real + (aux_fake if fake_aux else 0.0))
    metrics = {
        "d_loss": loss.item(),
        "wasserstein": wasserstein.item(),
        "gp": gp.item(),
        "d_aux_real": aux_real.item(),
        "d_aux_fake": aux_fake.item(),
        "d_acc_real": (logits[:n].argmax(1) == labels).float().mean().item(),
    }
    return loss, metrics


def g_loss(
    D: nn.Module, fake: torch.Tensor, labels: torch.Tensor, *, aux_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Generator loss of DiM: ``L_G = -mean c(G(z, y)) + aux_weight * CE(l(G(z, y)), y)``.

    Wrap the call in :func:`frozen` (``D``) to keep gradients out of the critic.
    Metrics: ``g_loss``, ``g_adv`` (-mean critic), ``g_aux``, ``g_acc`` (class accuracy on the fakes).
    """
    critic, logits = D(fake, labels)
    adv = -critic.mean()
    aux = F.cross_entropy(logits, labels)
    loss = adv + aux_weight * aux
    metrics = {
        "g_loss": loss.item(),
        "g_adv": adv.item(),
        "g_aux": aux.item(),
        "g_acc": (logits.argmax(1) == labels).float().mean().item(),
    }
    return loss, metrics


def global_logit_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """DiM's logit matching (``matchloss``, ``--match logit``), without its 0.01 weight:

    ``mean_{i,k} (log_softmax f(x_i)_k - log_softmax f(G(z_i, y_i))_k)^2``

    Pairs are **per sample**: the fakes are generated with the real batch's labels in the
    same order, so row i of both is the same class (no per-class or batch averaging).
    The real side is a target (detached). In expectation over the real sample of class y
    this pulls every fake towards that class's mean log-probabilities (plus a constant).
    """
    if logits_real.shape != logits_fake.shape:
        raise ValueError(
            f"paired logits need equal shapes, got {tuple(logits_real.shape)}, {tuple(logits_fake.shape)}"
        )
    target = F.log_softmax(logits_real.detach(), dim=1)
    return (target - F.log_softmax(logits_fake, dim=1)).square().mean()


def local_feature_loss(
    feat_real: torch.Tensor,
    feat_fake: torch.Tensor,
    *,
    pairing: str = "paired",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Li et al. (2024)'s local-detail term, without its 0.001 weight: MSE of mid-layer features.

    ``pairing='paired'`` (default): ``mean_{i,...} (F(x_i) - F(G(z_i, y_i)))^2`` over every
    element, the fakes generated with the real batch's labels in the same order, like the
    global term. The paper gives an MSE between the intermediate features of real and
    generated images and no code was published, so the pairing follows DiM's logit term.
    ``pairing='class_mean'``: ``mean_c mean (mean_{i: y_i=c} F(x_i) - mean_{i: y_i=c} F(G_i))^2``
    over the classes present in ``labels`` (shared by both, paired order), which matches
    per-class batch means as DiM's ``--match feat`` option does (there for the whole batch)
    and leaves the fakes free to differ from one another. The real side is detached.
    """
    if feat_real.shape != feat_fake.shape:
        raise ValueError(
            f"paired features need equal shapes, got {tuple(feat_real.shape)}, {tuple(feat_fake.shape)}"
        )
    target = feat_real.detach()
    if pairing == "paired":
        return F.mse_loss(feat_fake, target)
    if pairing != "class_mean":
        raise ValueError(f"pairing must be 'paired' or 'class_mean', got {pairing!r}")
    if labels is None or labels.shape != feat_real.shape[:1]:
        raise ValueError("pairing='class_mean' needs one label per row")
    classes, inverse = labels.unique(return_inverse=True)
    onehot = F.one_hot(inverse, len(classes)).to(feat_fake.dtype)  # (B, C)
    weights = onehot / onehot.sum(0, keepdim=True)  # column c averages the rows of class c
    mean_real = weights.T @ target.flatten(1)
    mean_fake = weights.T @ feat_fake.flatten(1)
    return F.mse_loss(mean_fake, mean_real)


def _stats(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def to_normalized(
    x_tanh: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Map generator output in [-1, 1] to the dataset's normalisation: ``((x + 1) / 2 - mean) / std``.

    hpcdd's real images are ``(x01 - mean) / std``; the official DiM code feeds its pool
    models real images normalised with (0.5, 0.5) but generated images with the dataset
    mean/std in some places, a mismatch not reproduced here. Differentiable.
    """
    return ((x_tanh + 1) / 2 - _stats(mean, x_tanh)) / _stats(std, x_tanh)


def from_normalized(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`to_normalized`: dataset-normalised images to the [-1, 1] scale.

    DiM pretrains its GAN on images scaled to [-1, 1] ((0.5, 0.5) normalisation): use this
    on hpcdd's real batches before the critic, so real and generated inputs share a scale.
    """
    return (x * _stats(std, x) + _stats(mean, x)) * 2 - 1
