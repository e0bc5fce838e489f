"""Specs: what each method, sampler and prerequisite *is*, declared without torch.

A spec names its parameters (a frozen dataclass with the paper defaults, one docstring line per
field, validation in ``__post_init__``), what it needs built first, what it produces, and where
its implementation lives (``"module:Class"``, imported only when something runs). Resolving
configs, computing identities, expanding grids and ``sweep status`` therefore never import torch
or a method's code.

Registries are explicit dicts; a duplicate name raises. Modules named in ``$HPCDD_PLUGINS``
(comma-separated) are imported on first use, so a lab's own methods register like built-ins
(and reach array tasks, which inherit the environment).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from hpcdd.config import RunConfig, check_config, eval_flat_names, field_names
from hpcdd.errors import ConfigError
from hpcdd.registry import Registry

PLUGINS_ENV = "HPCDD_PLUGINS"
OUTPUTS = ("images", "generator")


@dataclass(frozen=True)
class NoParams:
    """A method or sampler without parameters of its own."""

    def __post_init__(self) -> None:
        check_config(self)


@dataclass(frozen=True)
class PrereqRef:
    """One prerequisite a run needs: its kind and its resolved config (identity: the catalog)."""

    kind: str
    """Registered prerequisite kind, e.g. gan_pretrain."""
    config: Any
    """The prerequisite's config dataclass instance."""
    role: str = ""
    """What the dependant calls it (e.g. 'gan'); several refs of one kind need distinct roles."""


@dataclass(frozen=True)
class MethodSpec:
    """A distillation method."""

    name: str
    """Registry name (``method:`` in configs)."""
    impl: str
    """``module:Class`` of the Distiller, imported only to run."""
    summary: str
    """One line for --help and docs."""
    params: type = NoParams
    """Frozen dataclass of the method's own parameters (defaults = the paper's)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """RunConfig fields filled in when null (e.g. iterations, batch_real)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """RunConfig fields this method always resolves to (e.g. iterations=0 for coresets)."""
    output: str = "images"
    """What the artefact is: 'images' (a fixed synthetic set) or 'generator'."""
    samplers: bool = True
    """Whether the method draws real images through a sampler (random, dream)."""
    prerequisites: Callable[[RunConfig], list[PrereqRef]] | None = None
    """Prerequisites of a resolved config, built first and shared by every run that needs them."""
    check: Callable[[RunConfig], None] | None = None
    """Checks across fields of a resolved config (e.g. parameters that depend on ipc); raises
    ``ConfigError``. Runs at resolution, so a bad grid point is refused before anything runs."""
    real_per_class: Callable[[RunConfig, int], int] | None = None
    """Real images per class it asks its sampler for per step, given the number of classes
    (default: ``batch_real``)."""
    preflight: str | None = None
    """``module:function`` called as ``f(cfg, dataset, exec_cfg)`` in the run's process before it
    writes any file: checks that need torch or the loaded data (e.g. a memory estimate against
    ``exec_cfg.memory_limit_gb``); raises ``ConfigError``."""

    def per_class(self, cfg: RunConfig, num_classes: int) -> int:
        return self.real_per_class(cfg, num_classes) if self.real_per_class else cfg.batch_real

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"method {self.name}: output must be one of {OUTPUTS}")


@dataclass(frozen=True)
class SamplerSpec:
    """How a matching method draws its real images."""

    name: str
    impl: str
    summary: str
    params: type = NoParams
    check: Callable[[Any, int, int], None] | None = None
    """``check(params, n, smallest_class)``: refuse (``ConfigError``) a per-class request of ``n``
    it cannot serve; run before a run writes any file."""


@dataclass(frozen=True)
class PrereqSpec:
    """A prerequisite artefact: a job with its own config, identity and directory."""

    kind: str
    """Registry name; artefacts live in ARTEFACT_ROOT/<kind>/<id>."""
    impl: str
    """``module:Class`` of the job (a Steppable, see hpcdd.prereq)."""
    summary: str
    config: type
    """Frozen dataclass of its config (the identity hashes its non-default values)."""


S = TypeVar("S")


class SpecRegistry(Registry[S]):
    """A :class:`hpcdd.registry.Registry` of specs that imports ``$HPCDD_PLUGINS`` before lookups."""

    def add(self, name: str, spec: S) -> S:
        return self.register(name)(spec)

    def get(self, name: str) -> S:
        load_plugins()
        return super().get(name)

    def names(self) -> list[str]:
        load_plugins()
        return super().names()

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return super().__contains__(name)


METHODS: SpecRegistry[MethodSpec] = SpecRegistry("method")
SAMPLERS: SpecRegistry[SamplerSpec] = SpecRegistry("sampler")
PREREQS: SpecRegistry[PrereqSpec] = SpecRegistry("prerequisite kind")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.add(spec.name, spec)


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    return SAMPLERS.add(spec.name, spec)


def register_prereq(spec: PrereqSpec) -> PrereqSpec:
    return PREREQS.add(spec.kind, spec)


def plugin_modules() -> list[str]:
    """The module names in ``$HPCDD_PLUGINS``."""
    return [n for n in (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",")) if n]


def load_plugins() -> None:
    """Import the modules named in ``$HPCDD_PLUGINS`` (a no-op for those already imported); when
    one is imported now, check that every flat key still has one owner (:func:`check_flat_keys`),
    so a plugin parameter that shadows a run key is refused at once with one line."""
    names = plugin_modules()
    new = [name for name in names if name not in sys.modules]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import plugin module {name!r} from ${PLUGINS_ENV}: {e}") from None
    if new:
        try:
            check_flat_keys()
        except ValueError as e:
            raise ConfigError(f"plugin module(s) {', '.join(new)} from ${PLUGINS_ENV}: {e}") from None


def _all_params(registry: SpecRegistry) -> set[str]:
    """Every parameter name of the specs registered so far (no plugin loading: this runs inside it)."""
    return {n for name in Registry.names(registry) for n in param_names(Registry.get(registry, name).params)}


def check_flat_keys() -> None:
    """Parameter names never shadow run/eval keys, and method and sampler parameters never share
    a name, so every flat key has one owner; ``ValueError`` naming the clash otherwise."""
    reserved = set(field_names(RunConfig)) | set(eval_flat_names())
    methods, samplers = _all_params(METHODS), _all_params(SAMPLERS)
    for what, names in (("method", methods), ("sampler", samplers)):
        clash = sorted(names & reserved)
        if clash:
            raise ValueError(f"{what} parameter(s) {clash} shadow RunConfig/EvalConfig keys")
    if methods & samplers:
        raise ValueError(f"method and sampler parameters share names: {sorted(methods & samplers)}")


def load_impl(path: str) -> Any:
    """The object named by ``"module:attr"`` (imports the module)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def param_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


__all__ = [
    "NoParams", "PrereqRef", "MethodSpec", "SamplerSpec", "PrereqSpec", "SpecRegistry",
    "METHODS", "SAMPLERS", "PREREQS", "register_method", "register_sampler", "register_prereq",
    "load_impl", "load_plugins", "plugin_modules", "param_names", "check_flat_keys", "PLUGINS_ENV",
]
