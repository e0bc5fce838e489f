"""Run configuration: what defines a result (``RunConfig``) vs where/how it runs (``ExecConfig``).

Only ``RunConfig`` enters a run's identity. Identity is a short hash of the *non-default* fields
of the resolved config (Dora-style), so adding a new option with a default later does not rename
finished runs; ``tests/test_config.py`` pins the defaults so changing one is a visible decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from hpcdd.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a distillation result (one row of a results table)."""

    method: str = "dm"
    """Distillation method (registry name): dm, random, herding, kcenter, ..."""
    dataset: str = "fashionmnist"
    """Dataset (registry name)."""
    ipc: int = 10
    """Synthetic images per class."""
    seed: int = 0
    """Root seed; every random draw is derived from it and a purpose string."""
    iterations: int | None = None
    """Outer distillation iterations; None takes the method's paper default (DM: 20000)."""
    im_size: int | None = None
    """Resize images to im_size x im_size (imagefolder only; None: 32)."""
    net: str = "convnet3"
    """Network used for matching / embedding (registry name)."""
    sampler: str = "random"
    """How real images are picked for matching (registry name): random, ..."""
    init: str = "real"
    """Synthetic-set initialisation: 'real' (random real images) or 'noise'."""
    batch_real: int = 256
    """Real images per class per matching step."""
    lr_img: float | None = None
    """Learning rate of the synthetic images; None takes the method's paper default (DM: 1.0)."""
    momentum_img: float = 0.5
    """SGD momentum of the synthetic images."""
    dsa: bool = True
    """Apply differentiable siamese augmentation while matching."""
    dsa_strategy: str | None = None
    """DSA ops joined by '_'; None takes the dataset default (no flip for digit datasets)."""
    precision: str = "fp32"
    """'fp32', or 'bf16' autocast for the no-grad real-image forward pass."""
    eval_models: tuple[str, ...] = ("convnet3",)
    """Architectures trained from scratch on the synthetic set (cross-architecture eval)."""
    eval_epochs: int = 1000
    """Epochs of the DC evaluation protocol (lr x0.1 at half)."""
    eval_n: int = 5
    """Fresh models trained per eval architecture (mean +- std over them)."""
    eval_lr: float = 0.01
    """SGD learning rate of evaluation training (momentum 0.9, weight decay 5e-4)."""
    eval_batch: int = 256
    """Batch size of evaluation training."""
    eval_dsa: bool = True
    """Use DSA augmentation when training evaluation models."""

    def __post_init__(self) -> None:
        _check_types(self)
        _canonical_floats(self)
        if self.ipc < 1:
            raise ConfigError(f"ipc must be >= 1, got {self.ipc}")
        if self.iterations is not None and self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        for name in ("batch_real", "eval_epochs", "eval_n", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_img is not None and self.lr_img < 0:
            raise ConfigError(f"lr_img must be >= 0, got {self.lr_img}")
        if self.eval_lr <= 0:
            raise ConfigError(f"eval_lr must be > 0, got {self.eval_lr}")
        if self.init not in ("real", "noise"):
            raise ConfigError(f"init must be 'real' or 'noise', got {self.init!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if not self.eval_models:
            raise ConfigError("eval_models must name at least one architecture")
        if len(set(self.eval_models)) != len(self.eval_models):
            raise ConfigError(f"eval_models lists an architecture twice: {list(self.eval_models)}")
        if self.im_size is not None and self.im_size < 8:
            raise ConfigError(f"im_size must be >= 8, got {self.im_size}")

    @property
    def protocol(self) -> str:
        """Label of the evaluation protocol; results with different labels are never averaged."""
        label = f"dc{self.eval_epochs}"
        if not self.eval_dsa:
            label += "-noaug"
        if self.eval_lr != 0.01 or self.eval_batch != 256:
            label += f"-lr{self.eval_lr:g}-b{self.eval_batch}"
        return label


@dataclass(frozen=True)
class ExecConfig:
    """Where and how a run executes. Never part of the run's identity."""

    data_root: str | None = None
    """Directory holding dataset files (default: the dataset's standard location)."""
    download: bool = False
    """Allow torchvision to download a missing dataset."""
    checkpoint_every: int = 50
    """Write an atomic checkpoint every this many iterations."""
    eval_every: int = 0
    """If > 0, log a quick eval (1 model, eval_every-epoch budget of 100) to metrics.jsonl
    every this many iterations. 0 disables it."""
    progress: bool = True
    """Show tqdm progress bars."""
    deterministic: bool = True
    """Use deterministic algorithms (bit-identical resume on CPU)."""
    threads: int | None = None
    """torch CPU threads (None: torch's default). Sweeps set it from cpus_per_task, or share the
    cores between parallel local runs. Bitwise results depend on it (reduction order)."""

    def __post_init__(self) -> None:
        _check_types(self)
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


# ---------------------------------------------------------------------------------------------
# type checking and conversion from plain dicts (YAML / CLI)


def _check_types(obj: Any) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(
                f"config key {f.name!r} must be {_type_name(hints[f.name])}, got {value!r}"
            )


def _canonical_floats(obj: Any) -> None:
    """Store ints given for float fields as floats (so 1 and 1.0 are one identity) and reject
    NaN/Inf. Runs in ``__post_init__``: the frozen value is canonical from the start."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if float in (hints[f.name], *typing.get_args(hints[f.name])) and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key {f.name!r} must be finite, got {value!r}")
            object.__setattr__(obj, f.name, float(value))


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        return isinstance(value, tuple) and all(_matches(v, inner) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(args[0])}"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else tp.__name__


def _coerce(value: Any, tp: Any) -> Any:
    """Lists become tuples and ints become floats where the field wants them; nothing else."""
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_args(tp) and float in typing.get_args(tp):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build ``cls`` from a plain dict; unknown keys and wrong types raise ``ConfigError``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(map(str, unknown))}")
    return cls(**{k: _coerce(v, hints[k]) for k, v in data.items()})


def run_config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


# ---------------------------------------------------------------------------------------------
# canonical form and identity


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready dict (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def non_default(cfg: RunConfig) -> dict[str, Any]:
    """The fields whose value differs from the dataclass default."""
    defaults = to_dict(RunConfig())
    return {k: v for k, v in to_dict(cfg).items() if v != defaults[k]}


def run_id(cfg: RunConfig) -> str:
    """12-hex-digit identity of a *resolved* config: hash of its non-default fields."""
    canon = json.dumps(non_default(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def resolve(cfg: RunConfig) -> RunConfig:
    """Check every registry name and fill method defaults (the config that actually runs)."""
    from hpcdd import data, nets
    from hpcdd.distill import METHODS
    from hpcdd.select import SAMPLERS

    method = METHODS.get(cfg.method)
    data.DATASETS.get(cfg.dataset)
    nets.NETS.get(cfg.net)
    for name in cfg.eval_models:
        nets.NETS.get(name)
    SAMPLERS.get(cfg.sampler)
    updates: dict[str, Any] = {k: v for k, v in method.defaults.items() if getattr(cfg, k) is None}
    updates.update(method.fixed)
    if cfg.dsa_strategy is None:
        from hpcdd.augment import default_strategy

        updates["dsa_strategy"] = default_strategy(cfg.dataset)
    else:
        from hpcdd.augment import check_strategy

        check_strategy(cfg.dsa_strategy)
    return dataclasses.replace(cfg, **updates)


__all__ = [
    "RunConfig",
    "ExecConfig",
    "from_dict",
    "to_dict",
    "run_id",
    "resolve",
    "non_default",
    "field",
]
