"""Configs as plain data: what defines a distillation (``RunConfig``), what defines an evaluation
of it (``EvalConfig``), and where/how either runs (``ExecConfig``).

This module imports neither torch nor any registry: it is plain data, type and range checks, the
canonical dict form and the identity hash. Resolving a config against the registries (method
defaults, method and sampler parameters) lives above it, in :mod:`hpcdd.catalog`.

Identity is a short hash of the *non-default* fields of a resolved config (Dora-style), so adding
a new option with a default later does not rename finished runs; ``tests/test_config.py`` pins
the defaults so changing one is a visible decision.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping

from hpcdd.errors import ConfigError, brief

PRECISIONS = ("fp32", "bf16")
EVAL_KINDS = ("fixed", "resample")
ENSEMBLE_MODES = ("auto", "on", "off")
"""Values of the exec key ``eval_ensemble``."""
EVAL_PREFIX = "eval_"
"""EvalConfig fields appear as ``eval_<field>`` in flat keys: flags, grid files, CSV columns."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a distillation (its artefact: a synthetic set or a generator)."""

    method: str = "dm"
    """Distillation method (registry name; the names are listed below)."""
    dataset: str = "fashionmnist"
    """Dataset (registry name)."""
    ipc: int | None = 10
    """Synthetic images per class (generator methods: set per evaluation, resolved to null)."""
    seed: int = 0
    """Root seed; every random draw is derived from it and a purpose string."""
    iterations: int | None = None
    """Outer distillation iterations; null takes the method's paper default (DM: 20000)."""
    im_size: int | None = None
    """Resize images to im_size x im_size (null: the dataset's own size; imagefolder: 32)."""
    net: str = "convnet3"
    """Network used for matching / embedding (registry name)."""
    sampler: str = "random"
    """How real images are picked for matching (registry name; listed below)."""
    batch_real: int = 256
    """Real images per class per matching step."""
    dsa: bool = True
    """Apply differentiable siamese augmentation while matching."""
    dsa_strategy: str | None = None
    """DSA ops joined by '_'; null takes the dataset default (no flip for digit datasets)."""
    precision: str = "fp32"
    """'fp32', or 'bf16' autocast for the no-grad real-image forward pass."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """The method's own parameters (resolved: every one of them)."""
    sampler_params: Mapping[str, Any] = field(default_factory=dict)
    """The sampler's own parameters (resolved: every one of them)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.ipc is not None and self.ipc < 1:
            raise ConfigError(f"ipc must be >= 1, got {self.ipc}")
        if self.iterations is not None and self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch_real < 1:
            raise ConfigError(f"batch_real must be >= 1, got {self.batch_real}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {brief(self.precision)}")
        if self.im_size is not None and not 8 <= self.im_size <= 1024:
            raise ConfigError(f"im_size must be between 8 and 1024, got {self.im_size}")
        for name in ("params", "sampler_params"):
            value = getattr(self, name)
            if not all(isinstance(k, str) for k in value):
                raise ConfigError(f"{name} keys must be names, got {list(value)}")
            object.__setattr__(self, name, dict(value))


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation of a distillation: fresh nets trained on its images, tested on real data.

    Kept out of the distillation's identity: a new evaluation never re-distils. Flat keys (flags,
    grid files, CSV columns) carry the prefix ``eval_`` (``eval_models``, ``eval_epochs``, ...).
    """

    models: tuple[str, ...] = ("convnet3",)
    """Architectures trained from scratch on the synthetic images (cross-architecture eval)."""
    epochs: int = 1000
    """Training epochs of each model (DC protocol: lr x0.1 at half)."""
    n: int = 5
    """Fresh models trained per architecture (mean +- std over them)."""
    lr: float = 0.01
    """SGD learning rate (momentum 0.9, weight decay 5e-4)."""
    batch: int = 256
    """Training batch size."""
    dsa: bool = True
    """Train with DSA augmentation (the dataset's default strategy)."""
    kind: str = "fixed"
    """fixed: one image set per model; resample: fresh generator images every epoch (DiM)."""
    ipc: int | None = None
    """Images per class drawn from a generator; null: the run's ipc (image sets: as distilled)."""

    def __post_init__(self) -> None:
        check_config(self)
        for name in ("epochs", "n", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{EVAL_PREFIX}{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr <= 10:
            raise ConfigError(f"{EVAL_PREFIX}lr must be in (0, 10], got {self.lr}")
        if self.kind not in EVAL_KINDS:
            raise ConfigError(f"{EVAL_PREFIX}kind must be one of {', '.join(EVAL_KINDS)}, got {brief(self.kind)}")
        if self.ipc is not None and self.ipc < 1:
            raise ConfigError(f"{EVAL_PREFIX}ipc must be >= 1, got {self.ipc}")
        if not self.models:
            raise ConfigError(f"{EVAL_PREFIX}models must name at least one architecture")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"{EVAL_PREFIX}models lists an architecture twice: {list(self.models)}")

    @property
    def protocol(self) -> str:
        """Label of the evaluation protocol; results with different labels are never averaged."""
        label = f"dc{self.epochs}" if self.kind == "fixed" else f"dim-resample{self.epochs}"
        if not self.dsa:
            label += "-noaug"
        if self.lr != 0.01 or self.batch != 256:
            label += f"-lr{self.lr:g}-b{self.batch}"
        return label


@dataclass(frozen=True)
class ExecConfig:
    """Where and how a run executes. Never part of any identity."""

    data_root: str | None = None
    """Directory holding dataset files (default: the dataset's standard location)."""
    download: bool = False
    """Allow torchvision to download a missing dataset."""
    artefact_root: str | None = None
    """Where prerequisite artefacts (pretrained GANs, expert trajectories) are built and shared
    (null: $HPCDD_ARTEFACTS, else ~/.cache/hpcdd/artefacts)."""
    checkpoint_every: int = 50
    """Write an atomic checkpoint every this many iterations."""
    checkpoint_minutes: float = 10.0
    """Also checkpoint when this many minutes passed since the last one, so an outside requeue
    or a node failure loses at most that much work."""
    eval_every: int = 0
    """If > 0, log a quick eval (1 model, 100 epochs) to metrics.jsonl at iteration 0 and every
    this many iterations. 0 disables it."""
    eval_points: int = 0
    """If > 0, log that many quick evals, evenly spaced over the iterations (plus iteration 0),
    whatever the budget (a curve of the same resolution for a 10- and a 200-iteration run)."""
    eval_at: tuple[int, ...] = ()
    """Also log quick evals after exactly these iterations (plus iteration 0; those beyond the
    budget are ignored), e.g. denser early in a curve."""
    eval_point_n: int = 1
    """Fresh models trained at each quick eval (their mean is logged as eval_acc, each in eval_accs)."""
    progress: bool = True
    """Show progress: a tqdm bar on a terminal, else a line every 30 s (readable in Slurm logs)."""
    deterministic: bool = True
    """Use deterministic algorithms (bit-identical resume on CPU)."""
    threads: int | None = None
    """torch CPU threads (null: torch's default). Sweeps set it from cpus_per_task, or share the
    cores between parallel local runs. Bitwise results depend on it (reduction order)."""
    memory_limit_gb: float | None = None
    """Refuse, before writing any file, a run whose memory estimate exceeds this many GB (methods
    that estimate their peak memory: mtt); null: no limit."""
    eval_ensemble: str = "auto"
    """Train an evaluation's models of one architecture as one batched ensemble: on, off, or auto
    (on a GPU; one by one on CPU, which keeps CPU results bitwise). Same accuracies up to rounding."""
    eval_ensemble_max: int = 0
    """Most models per ensemble (0: all of an architecture's); lower it when GPU memory is short."""
    dist_timeout_s: float = 1800.0
    """With several processes (torchrun, accelerate launch, a Slurm job of several tasks): seconds a
    process waits for the others at a collective before it stops with one line (a dead or stuck rank)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not 0 < self.checkpoint_minutes <= 10080:
            raise ConfigError(f"checkpoint_minutes must be in (0, 10080], got {self.checkpoint_minutes}")
        if self.eval_every < 0 or self.eval_points < 0:
            raise ConfigError(f"eval_every and eval_points must be >= 0, got {self.eval_every}, {self.eval_points}")
        if any(i < 0 for i in self.eval_at):
            raise ConfigError(f"eval_at must list iterations >= 0, got {list(self.eval_at)}")
        if self.eval_point_n < 1:
            raise ConfigError(f"eval_point_n must be >= 1, got {self.eval_point_n}")
        if self.eval_ensemble not in ENSEMBLE_MODES:
            raise ConfigError(f"eval_ensemble must be one of {', '.join(ENSEMBLE_MODES)}, got {self.eval_ensemble!r}")
        if self.eval_ensemble_max < 0:
            raise ConfigError(f"eval_ensemble_max must be >= 0, got {self.eval_ensemble_max}")
        if not 0 < self.dist_timeout_s <= 7 * 86400:
            raise ConfigError(f"dist_timeout_s must be in (0, 604800], got {self.dist_timeout_s}")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise ConfigError(f"threads must be between 1 and 4096, got {self.threads}")
        if self.memory_limit_gb is not None and self.memory_limit_gb <= 0:
            raise ConfigError(f"memory_limit_gb must be > 0 or null, got {self.memory_limit_gb}")
        for name in ("data_root", "artefact_root"):
            if getattr(self, name) == "":
                raise ConfigError(f"{name} must be a directory, got an empty string")


# ---------------------------------------------------------------------------------------------
# type checking and conversion from plain dicts (YAML / CLI)


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` of a config class, computed once per class."""
    return typing.get_type_hints(cls)


@functools.cache
def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _field_checks(cls: type) -> tuple[tuple[str, frozenset[type], Callable[[Any], bool], bool, Any], ...]:
    """Per field of ``cls``, once per class: (name, types accepted as they are, type predicate,
    wants a float, type hint). The predicate does what :func:`_matches` does without asking
    ``typing`` per value; a value of an accepted type (``str`` for ``str``, ``int`` or ``None`` for
    ``int | None``, ...) passes without calling it."""
    hints = type_hints(cls)
    return tuple((name, _exact_types(hints[name]), _checker(hints[name]), _wants_float(hints[name]),
                  hints[name]) for name in field_names(cls))


def check_config(obj: Any) -> None:
    """Check every field's type (``ConfigError`` naming it), store ints given for float fields as
    floats (so 1 and 1.0 are one identity) and reject NaN/Inf. Call from ``__post_init__``."""
    for name, exact, ok, wants_float, tp in _field_checks(type(obj)):
        value = getattr(obj, name)
        if type(value) not in exact and not ok(value):
            raise ConfigError(f"config key {name!r} must be {_type_name(tp)}, got {brief(value)}")
        if wants_float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key {name!r} must be finite, got {brief(value)}")
            if type(value) is not float:
                object.__setattr__(obj, name, float(value))


def _exact_types(tp: Any) -> frozenset[type]:
    """Types whose every value :func:`_matches` ``tp`` (``bool`` never counts as ``int``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return frozenset().union(*(_exact_types(t) for t in typing.get_args(tp)))
    if tp is type(None) or tp in (str, int, float, bool):
        return frozenset({tp})
    return frozenset()


def _checker(tp: Any) -> Callable[[Any], bool]:
    """A predicate equal to ``lambda value: _matches(value, tp)``, with the type inspected once."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = tuple(_checker(t) for t in typing.get_args(tp))
        if len(parts) == 2 and type(None) in typing.get_args(tp):
            other = parts[1] if typing.get_args(tp)[0] is type(None) else parts[0]
            return lambda v: v is None or other(v)
        return lambda v: any(part(v) for part in parts)
    if tp is type(None):
        return lambda v: v is None
    if tp is Any:
        return lambda v: True
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        item = _checker(inner)
        return lambda v: isinstance(v, tuple) and all(item(x) for x in v)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return lambda v: isinstance(v, collections.abc.Mapping)
    if tp is bool:
        return lambda v: isinstance(v, bool)
    if tp is int:
        return lambda v: isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    return lambda v: isinstance(v, tp)


def _wants_float(tp: Any) -> bool:
    return tp is float or float in typing.get_args(tp)


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        return isinstance(value, tuple) and all(_matches(v, inner) for v in value)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping)
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
    if typing.get_origin(tp) in (dict, collections.abc.Mapping):
        return "a mapping"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Lists become tuples where the field wants a tuple; nothing else (floats: check_config)."""
    wants_tuple = typing.get_origin(tp) is tuple or any(
        typing.get_origin(a) is tuple for a in typing.get_args(tp))
    if wants_tuple and isinstance(value, list):
        return tuple(value)
    return value


@functools.cache
def _from_dict_info(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """(field names, names of the fields whose list values :func:`_coerce` makes tuples)."""
    hints = type_hints(cls)
    tuples = frozenset(n for n in field_names(cls) if _coerce([], hints[n]) == ())
    return frozenset(field_names(cls)), tuples


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build ``cls`` from a plain dict; unknown keys and wrong types raise ``ConfigError``."""
    if not isinstance(data, collections.abc.Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    names, tuples = _from_dict_info(cls)
    if not names.issuperset(data):
        unknown = sorted(map(str, set(data) - names))
        raise ConfigError(f"unknown key(s) in {where}: {brief(', '.join(unknown))}")
    try:
        return cls(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()})
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


# ---------------------------------------------------------------------------------------------
# canonical form and identity


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-ready dict (tuples become lists, mappings plain dicts), in field order."""
    return {name: _plain(getattr(cfg, name)) for name in field_names(type(cfg))}


_SCALARS = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """One value in :func:`to_dict` form (tuples as lists, mappings as plain dicts)."""
    return _plain(value)


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, collections.abc.Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def non_default(cfg: Any, defaults: Any | None = None, *, skip: Collection[str] = ()) -> dict[str, Any]:
    """The fields of ``cfg`` whose value differs from ``defaults`` (default: the class's), in
    :func:`to_dict` form and field order; fields named in ``skip`` are left out."""
    base = to_dict(defaults) if defaults is not None else _default_dict(type(cfg))
    return {k: v for k in field_names(type(cfg))
            if k not in skip and (v := _plain(getattr(cfg, k))) != base[k]}


@functools.cache
def _default_dict(cls: type) -> dict[str, Any]:
    """``to_dict(cls())``, once per class (read only: never handed out)."""
    return to_dict(cls())


def identity_hash(canonical: Mapping[str, Any]) -> str:
    """12 hex digits of the sha256 of the canonical JSON of ``canonical`` (sorted keys)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def eval_flat(ev: EvalConfig) -> dict[str, Any]:
    """``{"eval_models": [...], "eval_epochs": ..., ...}``: the flat keys of an EvalConfig."""
    return {EVAL_PREFIX + k: v for k, v in to_dict(ev).items()}


@functools.cache
def eval_flat_names() -> tuple[str, ...]:
    return tuple(EVAL_PREFIX + n for n in field_names(EvalConfig))


__all__ = [
    "RunConfig", "EvalConfig", "ExecConfig", "from_dict", "to_dict", "non_default",
    "identity_hash", "check_config", "type_hints", "field_names", "eval_flat", "eval_flat_names", "plain",
    "EVAL_PREFIX", "ENSEMBLE_MODES",
]
