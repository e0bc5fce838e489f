"""Generative distillation: a class-conditional GAN pretrained once (a prerequisite), then tuned so
its images match real ones through a pool of models.

* ``cgan``: the stage-1 generator as it is, no matching (what stage 2 adds is ``dim`` - ``cgan``).
* ``dim``: DiM (Wang et al., 2023): L = L_G + lambda_global * MSE(log_softmax logits, real vs
  generated).
* ``global_local``: Li et al. (2024), "Generative Dataset Distillation: Balancing Global Structure
  and Local Details": the same plus lambda_local * MSE(mid-layer features, real vs generated).
  ``dim`` is this method with lambda_local = 0.

Defaults are DiM's official ones (``vimar-gu/DiM``; see ``hpcdd.generative.losses.DimRecipe``) and
the paper's loss weights. The artefact is the generator: one run serves every ipc (set per
evaluation). The pretraining is shared by every run of the same GAN config, whatever its method,
seed, ipc or matching parameters. The implementation is :mod:`hpcdd.generative`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcdd.config import RunConfig, check_config
from hpcdd.errors import ConfigError
from hpcdd.names import DATASET_SIZES, NET_LAYERS, NET_NAMES
from hpcdd.specs.base import MethodSpec, PrereqRef, PrereqSpec, register_method, register_prereq
from hpcdd.specs.dsa import check_strategy

LABEL_MODES = ("onehot", "embed")
HEADS = ("acgan", "projection")
PAIRINGS = ("paired", "class_mean")
PRECISIONS = ("fp32", "bf16")
GAN_SIZES = (28, 32)
"""Image sides DiM's GAN handles."""
DIM_POOLS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (32, ("convnet3", "resnet10_imagenet", "resnet18_imagenet")),
)
"""(largest image side, pool) as DiM builds its pool: at 32 px and below, ConvNet3 and ResNets with
the ImageNet stem (DiM's MNIST/Fashion-MNIST models)."""


@dataclass(frozen=True)
class GanPretrainConfig:
    """Stage 1: WGAN-GP + ACGAN pretraining of DiM's conditional GAN on a dataset."""

    dataset: str = "fashionmnist"
    """Dataset the GAN learns."""
    im_size: int | None = None
    """Image size (null: the dataset's own)."""
    epochs: int = 150
    """Passes over the training set (DiM: 150)."""
    steps: int | None = None
    """Stop after this many steps (one generator and one critic update each) instead of epochs."""
    batch: int = 128
    """Real images per step (DiM: 128)."""
    lr: float = 1e-4
    """Adam learning rate of generator and critic (DiM: 1e-4, betas (0, 0.9))."""
    gp_lambda: float = 10.0
    """WGAN-GP weight."""
    aux_weight: float = 1.0
    """ACGAN class cross-entropy weight."""
    nz: int = 100
    """Noise dimensions (the first num_classes carry the one-hot label)."""
    width: int = 196
    """Channels of every GAN layer (DiM: 196)."""
    label_mode: str = "onehot"
    """How the label enters the generator: onehot (DiM, in the noise) or embed (learned)."""
    head: str = "acgan"
    """Critic's class conditioning: acgan (DiM, an auxiliary classifier) or projection."""
    seed: int = 0
    """Seed of the pretraining (independent of the runs' seeds, so they share it)."""
    precision: str = "fp32"
    """fp32, or bf16: autocast for the generator's and critic's forwards (weights stay fp32)."""

    def __post_init__(self) -> None:
        check_config(self)
        for name in ("epochs", "batch", "nz", "width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"gan {name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"gan steps must be >= 1, got {self.steps}")
        if self.lr <= 0 or self.gp_lambda < 0 or self.aux_weight < 0:
            raise ConfigError("gan lr must be > 0, gp_lambda and aux_weight >= 0")
        if self.label_mode not in LABEL_MODES:
            raise ConfigError(f"gan label_mode must be one of {', '.join(LABEL_MODES)}, got {self.label_mode!r}")
        if self.head not in HEADS:
            raise ConfigError(f"gan head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.seed < 0:
            raise ConfigError(f"gan seed must be >= 0, got {self.seed}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"gan precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass(frozen=True)
class GanParams:
    """The stage-1 parameters of every generative method (its pretraining prerequisite)."""

    gan_epochs: int = 150
    """Stage-1 pretraining epochs (DiM: 150)."""
    gan_steps: int | None = None
    """Stage-1 budget in steps instead of epochs (reduced budgets)."""
    gan_batch: int = 128
    """Stage-1 batch (DiM: 128)."""
    gan_lr: float = 1e-4
    """Stage-1 Adam learning rate (DiM: 1e-4)."""
    gan_width: int = 196
    """Channels of every GAN layer (DiM: 196)."""
    gan_nz: int = 100
    """Noise dimensions of the generator."""
    gan_label_mode: str = "onehot"
    """onehot (DiM) or embed (a learned label embedding)."""
    gan_head: str = "acgan"
    """acgan (DiM) or projection critic."""
    gan_seed: int = 0
    """Seed of the shared pretraining."""
    gan_precision: str = "fp32"
    """Generator and critic forwards in fp32 or bf16 autocast, in both stages."""

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class GenerativeParams(GanParams):
    """Stage 2 of ``global_local`` (and, with lambda_local 0, of ``dim``) and its pretraining."""

    lambda_global: float = 0.01
    """Weight of the global term: MSE of log-softmax logits, real vs generated (DiM: 0.01)."""
    lambda_local: float = 0.001
    """Weight of the local term: MSE of mid-layer features, real vs generated (Li et al.: 0.001)."""
    local_layers: tuple[str, ...] = ("convnet3:block2", "resnet10:layer2", "resnet18:layer2",
                                     "resnet10_imagenet:layer2", "resnet18_imagenet:layer2")
    """arch:layer of the local term for each pool model (ResNet layer2, ConvNet block 2)."""
    local_pairing: str = "paired"
    """Local term over paired samples (as the logits), or over per-class means (class_mean)."""
    pool: tuple[str, ...] | None = None
    """Pool models, one drawn per epoch, fresh (null: DiM's; up to 32 px convnet3, resnet10/18_imagenet)."""
    pool_warmup: int = 16
    """Real batches the pool model trains on before each generator step (DiM: 16)."""
    pool_every: int | None = None
    """Generator steps per pool model (null: one epoch of the real data, as DiM)."""
    pool_lr: float = 0.01
    """Pool model SGD learning rate (momentum 0.9, weight decay 5e-4)."""
    pool_aug: str = "color_crop"
    """Augmentation of the pool model's batches: these ops together, drawn per sample (DiM: color_crop)."""
    match_batch: int = 64
    """Real (and generated) images per generator step (DiM: 64), drawn class-balanced."""
    match_lr: float = 5e-6
    """Adam learning rate of generator and critic in stage 2 (DiM: 5e-6; states from stage 1)."""
    match_aug: str = "color_crop_cutout"
    """Augmentation of the matching batch: these ops together, one draw shared by real and generated."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.lambda_global < 0 or self.lambda_local < 0:
            raise ConfigError("lambda_global and lambda_local must be >= 0")
        if self.pool is not None and not self.pool:
            raise ConfigError("pool must name at least one model (or be null: DiM's pool)")
        for item in self.local_layers:
            arch, sep, layer = item.partition(":")
            if not sep or not arch or not layer:
                raise ConfigError(f"local_layers entries are arch:layer, got {item!r}")
        if self.local_pairing not in PAIRINGS:
            raise ConfigError(f"local_pairing must be one of {', '.join(PAIRINGS)}, got {self.local_pairing!r}")
        if self.pool_warmup < 0:
            raise ConfigError(f"pool_warmup must be >= 0, got {self.pool_warmup}")
        if self.match_batch < 1:
            raise ConfigError(f"match_batch must be >= 1, got {self.match_batch}")
        if self.pool_every is not None and self.pool_every < 1:
            raise ConfigError(f"pool_every must be >= 1, got {self.pool_every}")
        if self.pool_lr <= 0 or self.match_lr <= 0:
            raise ConfigError("pool_lr and match_lr must be > 0")
        check_strategy(self.pool_aug)
        check_strategy(self.match_aug)

    def layer_of(self, arch: str) -> str | None:
        """The local-term layer of a pool model (None: the model has no entry)."""
        return local_layer(self.local_layers, arch)


@dataclass(frozen=True)
class DimParams(GenerativeParams):
    """DiM: the generative method without the local term."""

    lambda_local: float = 0.0
    """Weight of the local term (DiM has none: 0)."""


def local_layer(local_layers: tuple[str, ...] | list[str], arch: str) -> str | None:
    """The layer ``local_layers`` names for ``arch`` (its first ``arch:layer`` entry), or None."""
    return next((layer for name, _, layer in (i.partition(":") for i in local_layers) if name == arch), None)


def image_size(cfg: RunConfig) -> int | None:
    """The run's image side, torch-free (None for an unknown dataset: refused elsewhere)."""
    return cfg.im_size if cfg.im_size is not None else DATASET_SIZES.get(cfg.dataset)


def pool_models(pool: tuple[str, ...] | list[str] | None, im_size: int) -> tuple[str, ...]:
    """The pool a run draws from: ``pool`` as given, else DiM's for the image size."""
    if pool is not None:
        return tuple(pool)
    for largest, models in DIM_POOLS:
        if im_size <= largest:
            return models
    raise ConfigError(f"no default pool for {im_size} px images (DiM's is known up to {DIM_POOLS[-1][0]} px); "
                      "name the pool models with pool")


def pretrain_config(cfg: RunConfig) -> GanPretrainConfig:
    """The stage-1 config a generative run needs (shared across methods, seeds and ipc)."""
    p = cfg.params
    return GanPretrainConfig(
        dataset=cfg.dataset, im_size=cfg.im_size, epochs=p["gan_epochs"], steps=p["gan_steps"],
        batch=p["gan_batch"], lr=p["gan_lr"], nz=p["gan_nz"], width=p["gan_width"],
        label_mode=p["gan_label_mode"], head=p["gan_head"], seed=p["gan_seed"], precision=p["gan_precision"])


def real_per_class(cfg: RunConfig, num_classes: int) -> int:
    """Real images per class of one generator step: the class-balanced share of match_batch."""
    return max(1, cfg.params["match_batch"] // num_classes)


def _prerequisites(cfg: RunConfig) -> list[PrereqRef]:
    return [PrereqRef("gan_pretrain", pretrain_config(cfg), role="gan")]


def _check_gan(cfg: RunConfig) -> None:
    pretrain_config(cfg)  # validates the gan_* parameters as the prerequisite's config
    size = image_size(cfg)
    if size is not None and size not in GAN_SIZES:
        raise ConfigError(f"DiM's GAN handles {' or '.join(map(str, GAN_SIZES))} px images, got {size}")


def _check_matching(cfg: RunConfig) -> None:
    p = cfg.params
    size = image_size(cfg)
    pool = pool_models(p["pool"], size) if size is not None else tuple(p["pool"] or ())
    unknown = [a for a in pool if a not in NET_NAMES]
    if unknown:
        raise ConfigError(f"unknown net {unknown[0]!r} in pool; choose from: {', '.join(NET_NAMES)}")
    if p["lambda_local"] > 0:
        for arch in pool:
            layer = local_layer(p["local_layers"], arch)
            if layer is None:
                raise ConfigError(f"local_layers names no layer for pool model {arch}")
            if layer not in NET_LAYERS[arch]:
                raise ConfigError(f"local_layers: pool model {arch} has no layer {layer!r}; "
                                  f"choose one of: {', '.join(NET_LAYERS[arch])}")
    _check_gan(cfg)


register_prereq(PrereqSpec("gan_pretrain", "hpcdd.generative.pretrain:GanPretrain",
                           "DiM's conditional WGAN-GP/ACGAN pretraining", GanPretrainConfig))
register_method(MethodSpec(
    name="cgan", impl="hpcdd.generative.cgan:CganDistiller", params=GanParams,
    summary="the pretrained conditional GAN alone (DiM's stage 1, no matching)",
    fixed={"iterations": 0}, output="generator", samplers=False, prerequisites=_prerequisites, check=_check_gan,
))
register_method(MethodSpec(
    name="global_local", impl="hpcdd.generative.matching:GenerativeDistiller", params=GenerativeParams,
    summary="Li et al. 2024: a cGAN tuned by global logit and local feature matching over a model pool",
    defaults={"iterations": 93750}, output="generator", prerequisites=_prerequisites, check=_check_matching,
    real_per_class=real_per_class,
))
register_method(MethodSpec(
    name="dim", impl="hpcdd.generative.matching:GenerativeDistiller", params=DimParams,
    summary="DiM (Wang et al. 2023): a cGAN tuned by logit matching over a model pool",
    defaults={"iterations": 93750}, output="generator", prerequisites=_prerequisites, check=_check_matching,
    real_per_class=real_per_class,
))
