"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022).

Two stages:

* **Experts** (the prerequisite ``mtt_expert``): each expert is a fresh ``net`` trained on the real
  data (official ``buffer.py``: SGD lr 0.01, no momentum, batch 256, the dataset's DSA, 50
  epochs) that saves its parameters at every epoch boundary. One expert is one prerequisite
  task (one Slurm array task). Its identity is the buffer config (dataset, image size, net,
  epochs, lr, momentum, batch, augmentation, sampler, buffer seed) plus its index; the number of
  experts is the buffer's, not an expert's, so a larger buffer reuses the experts of a smaller
  one. Every run with the same buffer config shares them, whatever its seed, ipc or MTT settings.
* **Distillation** (``method: mtt``): per iteration a student starts from an expert's parameters
  at a random epoch below ``max_start_epoch``, takes ``syn_steps`` SGD steps (learnable lr) on
  minibatches of ``batch_syn`` synthetic images, and the loss is
  ``||theta_student - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` with M =
  ``expert_epochs``; images and lr follow its gradient (SGD, momentum 0.5).

Defaults are the paper's published settings (``PAPER``, the official README's commands) for the
dataset and ipc where they exist, else CIFAR-10's; an ipc the paper does not list takes the
largest listed ipc below it. The CIFAR-10 ipc 1 and 10 settings were tuned on ZCA-whitened
images, which hpcdd does not use.

DREAM with trajectories: MTT draws real images only when it trains its experts, so that is
where the run's ``sampler`` enters: ``sampler: dream`` trains the experts on class-balanced
batches of DREAM's representative samples (``buffer_batch / classes`` per class) instead of
shuffled epochs; the sampler and its parameters are part of the experts' identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hpcdd.config import RunConfig, check_config
from hpcdd.errors import ConfigError
from hpcdd.specs.base import MethodSpec, PrereqRef, PrereqSpec, register_method, register_prereq
from hpcdd.specs.images import INITS

EXPERT_KIND = "mtt_expert"
EXPERT_CONFIG = "config.yaml"
"""Where a finished expert dir keeps its config (the prerequisite dir layout, torch-free)."""


@dataclass(frozen=True)
class Published:
    """One row of the paper's hyper-parameter table (``batch_syn`` None: the whole set)."""

    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    batch_syn: int | None
    lr_img: float
    lr_lr: float
    lr_teacher: float


PAPER: dict[str, dict[int, Published]] = {
    "cifar10": {1: Published(50, 2, 2, None, 100.0, 1e-7, 0.01),
                10: Published(30, 2, 20, None, 100.0, 1e-5, 0.001),
                50: Published(30, 2, 40, None, 1000.0, 1e-5, 0.001)},
    "cifar100": {1: Published(20, 3, 20, None, 1000.0, 1e-5, 0.01),
                 10: Published(20, 2, 20, None, 1000.0, 1e-5, 0.01),
                 50: Published(80, 2, 40, 125, 1000.0, 1e-5, 0.01)},
}
"""The paper's settings by dataset and ipc (the official README, "SOTA" commands): syn_steps N,
expert_epochs M, max_start_epoch T+, batch_syn (None: the whole set), lr_img, lr_lr, lr_teacher."""
FALLBACK = "cifar10"


def published(dataset: str, ipc: int) -> tuple[str, int, Published]:
    """(dataset, ipc) of the paper row a run takes its null settings from, and the row."""
    table_name = dataset if dataset in PAPER else FALLBACK
    table = PAPER[table_name]
    listed = [i for i in sorted(table) if i <= ipc] or [min(table)]
    return table_name, listed[-1], table[listed[-1]]


@dataclass(frozen=True)
class MttExpertConfig:
    """One expert trajectory: a net trained on the real data, saved at every epoch boundary."""

    dataset: str = "fashionmnist"
    """Dataset the expert trains on."""
    im_size: int | None = None
    """Image size (null: the dataset's own)."""
    net: str = "convnet3"
    """The expert's (and the student's) architecture."""
    epochs: int = 50
    """Epochs trained and kept: the trajectory holds epoch 0 (the initialisation) to this one."""
    lr: float = 0.01
    """SGD learning rate (official: 0.01)."""
    momentum: float = 0.0
    """SGD momentum (official: none)."""
    batch: int = 256
    """Real images per SGD step (official: 256)."""
    dsa: bool = True
    """Augment every real batch with DSA (official: yes)."""
    dsa_strategy: str | None = None
    """DSA ops (null: the dataset's default)."""
    sampler: str = "random"
    """random: shuffled epochs (official); another sampler (dream): class-balanced batches from it."""
    sampler_params: Mapping[str, Any] = field(default_factory=dict)
    """The sampler's parameters (resolved)."""
    seed: int = 0
    """The buffer's seed; the expert's own draws derive from it and its index."""
    index: int = 0
    """Which expert of the buffer this is."""

    def __post_init__(self) -> None:
        check_config(self)
        object.__setattr__(self, "sampler_params", dict(self.sampler_params))
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mtt expert {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.momentum < 1:
            raise ConfigError(f"mtt expert lr must be > 0 and momentum in [0, 1), got {self.lr}, {self.momentum}")
        if self.seed < 0 or self.index < 0:
            raise ConfigError(f"mtt expert seed and index must be >= 0, got {self.seed}, {self.index}")


@dataclass(frozen=True)
class MttParams:
    """MTT's knobs. Null settings take the paper's published value for the dataset and ipc
    (CIFAR-10, CIFAR-100; every other dataset CIFAR-10's; an unlisted ipc the largest listed ipc
    below it): N/M/T+ 50/2/2 at ipc 1, 30/2/20 at ipc 10, 30/2/40 at ipc 50 for CIFAR-10."""

    syn_steps: int | None = None
    """Student SGD steps on the synthetic set per iteration, N (null: the paper's; CIFAR-10 ipc 1/10/50: 50/30/30)."""
    expert_epochs: int | None = None
    """Expert epochs the student is matched over, M (null: the paper's; CIFAR-10: 2)."""
    max_start_epoch: int | None = None
    """The student starts at a random expert epoch below this, T+ (null: the paper's; CIFAR-10 ipc 1/10/50: 2/20/40)."""
    batch_syn: int | None = None
    """Synthetic images per student step; bounds memory (null: the paper's, the whole set except CIFAR-100 ipc 50: 125)."""
    lr_img: float | None = None
    """SGD learning rate of the synthetic pixels (null: the paper's; CIFAR-10 ipc 1/10/50: 100/100/1000, tuned with ZCA at 1/10)."""
    lr_lr: float | None = None
    """SGD learning rate of the learnable student lr (null: the paper's; CIFAR-10 ipc 1/10/50: 1e-7/1e-5/1e-5)."""
    lr_teacher: float | None = None
    """Initial student lr (null: the paper's; CIFAR-10 ipc 1/10/50: 0.01/0.001/0.001)."""
    momentum_img: float = 0.5
    """SGD momentum of the pixels and of the student lr (official: 0.5)."""
    init: str = "real"
    """Initial images: real (random real images, official), noise, kmeans (DREAM's init)."""
    buffer_experts: int = 100
    """Experts in the buffer, one prerequisite task each (official: 100)."""
    buffer_epochs: int | None = None
    """Epochs each expert trains and keeps (official: 50); null: max_start_epoch - 1 + expert_epochs, the last one this run reads."""
    buffer_lr: float = 0.01
    """Expert SGD learning rate (official: 0.01)."""
    buffer_momentum: float = 0.0
    """Expert SGD momentum (official: 0)."""
    buffer_batch: int = 256
    """Expert batch size (official: 256)."""
    buffer_seed: int = 0
    """Seed of the buffer (not the run's: every seed of a grid shares the experts)."""
    buffer_dir: str | None = None
    """Read the experts from this directory of finished mtt_expert dirs instead of building them (null: build or reuse them in the artefact root)."""

    def __post_init__(self) -> None:
        check_config(self)
        for name in ("syn_steps", "expert_epochs", "max_start_epoch", "batch_syn"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or null: the paper's value), got {value}")
        for name in ("lr_img", "lr_lr", "lr_teacher"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 (or null: the paper's value), got {value}")
        if not 0 <= self.momentum_img < 1:
            raise ConfigError(f"momentum_img must be in [0, 1), got {self.momentum_img}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name in ("buffer_experts", "buffer_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.buffer_epochs is not None and self.buffer_epochs < 1:
            raise ConfigError(f"buffer_epochs must be >= 1 or null, got {self.buffer_epochs}")
        if self.buffer_lr <= 0 or not 0 <= self.buffer_momentum < 1 or self.buffer_seed < 0:
            raise ConfigError("buffer_lr must be > 0, buffer_momentum in [0, 1), buffer_seed >= 0")
        if self.buffer_dir == "":
            raise ConfigError("buffer_dir must be a directory or null, got an empty string")


@dataclass(frozen=True)
class MttSettings(Published):
    """The settings a run uses: its parameters with the nulls filled from the paper's row
    (``batch_syn`` None: the whole synthetic set)."""

    source: str = ""
    """Which paper row filled the nulls, e.g. 'cifar10 ipc 10'."""

    @property
    def epochs_read(self) -> int:
        """The last expert epoch a distillation can read (its targets go up to this one)."""
        return self.max_start_epoch - 1 + self.expert_epochs


def settings(cfg: RunConfig) -> MttSettings:
    """A resolved mtt config's settings, nulls taken from the paper's table."""
    p = cfg.params
    table, ipc, row = published(cfg.dataset, int(cfg.ipc or 1))
    pick = {name: row.__dict__[name] if p.get(name) is None else p[name]
            for name in ("syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr", "lr_teacher")}
    batch = row.batch_syn if p.get("batch_syn") is None else p["batch_syn"]
    return MttSettings(**pick, batch_syn=batch, source=f"{table} ipc {ipc}")


def buffer_epochs(cfg: RunConfig) -> int:
    """Epochs each expert of the run's buffer trains and keeps."""
    given = cfg.params.get("buffer_epochs")
    s = settings(cfg)
    return given if given is not None else s.epochs_read


def expert_config(cfg: RunConfig, index: int) -> MttExpertConfig:
    """Expert ``index`` of the buffer a resolved mtt config needs."""
    p = cfg.params
    return MttExpertConfig(
        dataset=cfg.dataset, im_size=cfg.im_size, net=cfg.net, epochs=buffer_epochs(cfg), lr=p["buffer_lr"],
        momentum=p["buffer_momentum"], batch=p["buffer_batch"], dsa=cfg.dsa, dsa_strategy=cfg.dsa_strategy,
        sampler=cfg.sampler, sampler_params=dict(cfg.sampler_params), seed=p["buffer_seed"], index=index)


def _prerequisites(cfg: RunConfig) -> list[PrereqRef]:
    if cfg.params.get("buffer_dir"):
        return []  # an existing buffer: nothing to build
    return [PrereqRef(EXPERT_KIND, expert_config(cfg, k), role=f"expert{k}")
            for k in range(cfg.params["buffer_experts"])]


BUILD_KEYS = ("buffer_experts", "buffer_epochs", "buffer_lr", "buffer_momentum", "buffer_batch", "buffer_seed")
"""Parameters that describe a buffer to build (meaningless with ``buffer_dir``)."""


def _check(cfg: RunConfig) -> None:
    """Across fields: the buffer keeps every epoch the run reads; buffer_dir excludes the build keys."""
    s = settings(cfg)
    p = cfg.params
    defaults = MttParams()
    if p.get("buffer_dir"):
        given = [k for k in BUILD_KEYS if p.get(k) != getattr(defaults, k)]
        if given:
            raise ConfigError(f"buffer_dir reads an existing buffer; {', '.join(given)} describe one to build "
                              "(give one or the other)")
        return
    kept = buffer_epochs(cfg)
    if s.epochs_read > kept:
        raise ConfigError(
            f"max_start_epoch {s.max_start_epoch} with expert_epochs {s.expert_epochs} reads expert epochs up to "
            f"{s.epochs_read}, beyond the {kept} the buffer keeps (buffer_epochs {kept})")


def real_per_class(cfg: RunConfig, num_classes: int) -> int:
    """Real images per class an expert asks a (non-random) sampler for per step."""
    return max(1, cfg.params["buffer_batch"] // num_classes)


# ----------------------------------------------------------------------------------------------
# an existing buffer (buffer_dir), read torch-free


def read_buffer(path: str | Path) -> list[tuple[Path, MttExpertConfig]]:
    """The finished experts in ``path`` (each a dir with ``done`` and an mtt_expert config.yaml),
    by index. Raises ``ConfigError`` (one line) if there are none or they are not one buffer."""
    from hpcdd.config import from_dict
    from hpcdd.yamlfile import load_yaml_file

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"buffer_dir {root} is not a directory")
    found: list[tuple[Path, MttExpertConfig]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (sub / "done").exists() or not (sub / EXPERT_CONFIG).exists():
            continue
        try:
            cfg = from_dict(MttExpertConfig, load_yaml_file(sub / EXPERT_CONFIG, what="expert config"),
                            where=f"{sub / EXPERT_CONFIG}")
        except ConfigError:
            continue  # another kind of artefact
        found.append((sub, cfg))
    if not found:
        raise ConfigError(f"buffer_dir {root} holds no finished mtt_expert dirs (each with 'done' and config.yaml)")
    kinds = _buffer_keys(found)
    if len(kinds) > 1:
        raise ConfigError(f"buffer_dir {root} holds experts of {len(kinds)} different buffer configs; "
                          "give a directory holding one buffer")
    indices = [c.index for _, c in found]
    if len(set(indices)) != len(indices):
        raise ConfigError(f"buffer_dir {root} holds expert index {_first_dup(indices)} twice")
    return sorted(found, key=lambda item: item[1].index)


def _buffer_keys(found: list[tuple[Path, MttExpertConfig]]) -> set[str]:
    import json

    from hpcdd.config import to_dict

    return {json.dumps({**to_dict(c), "index": 0}, sort_keys=True) for _, c in found}


def _first_dup(values: list[int]) -> int:
    seen: set[int] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return -1


def check_buffer(cfg: RunConfig, experts: list[MttExpertConfig], where: str) -> None:
    """Refuse (one line) a buffer of another dataset, image size or net, or one that keeps fewer
    epochs than the run reads."""
    e = experts[0]
    if (e.dataset, e.net) != (cfg.dataset, cfg.net):
        raise ConfigError(f"the buffer in {where} was trained on {e.dataset} with net {e.net}; this run is "
                          f"{cfg.dataset} with net {cfg.net} (the student starts from the experts' weights)")
    if e.im_size != cfg.im_size:
        raise ConfigError(f"the buffer in {where} has im_size {e.im_size}; this run has {cfg.im_size}")
    s = settings(cfg)
    kept = min(x.epochs for x in experts)
    if s.epochs_read > kept:
        raise ConfigError(f"max_start_epoch {s.max_start_epoch} with expert_epochs {s.expert_epochs} reads expert "
                          f"epochs up to {s.epochs_read}, beyond the {kept} the buffer in {where} keeps")


register_prereq(PrereqSpec(EXPERT_KIND, "hpcdd.distill.mtt_experts:MttExpert",
                           "an MTT expert trajectory: a net trained on real data, saved every epoch",
                           MttExpertConfig))
register_method(MethodSpec(
    name="mtt", impl="hpcdd.distill.mtt:MTT", params=MttParams,
    summary="Matching Training Trajectories: unrolled student steps matched to expert trajectories",
    defaults={"iterations": 5000}, prerequisites=_prerequisites, check=_check, real_per_class=real_per_class,
    preflight="hpcdd.distill.mtt:preflight",
))

__all__ = ["MttParams", "MttExpertConfig", "MttSettings", "PAPER", "settings", "expert_config", "buffer_epochs",
           "read_buffer", "check_buffer", "EXPERT_KIND", "published"]
