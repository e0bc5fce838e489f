"""Resolution of configs against the registries: the layer above :mod:`hpcdd.config` (plain data)
and :mod:`hpcdd.specs` (what methods and samplers are), below everything that runs.

Users write *flat* keys (flags, config files, grid files): RunConfig fields (``ipc``), evaluation
keys (``eval_epochs``), and the method's and sampler's own parameters by name (``lr_img``,
``interval``). :func:`configs_from_flat` sorts them into a ``RunConfig`` (whose ``params`` and
``sampler_params`` hold the method's and sampler's) and an ``EvalConfig``; :func:`resolve` fills
paper defaults and validates; :func:`run_id` / :func:`eval_id` are the identities.

Nothing here imports torch; :func:`check_names` (datasets, nets) does, and only when called.
"""

from __future__ import annotations

import collections.abc
import functools
from typing import Any, Iterable, Mapping

from hpcdd.config import (
    EVAL_PREFIX, EvalConfig, RunConfig, eval_flat_names, field_names, from_dict, identity_hash,
    non_default, to_dict,
)
from hpcdd.errors import ConfigError, brief
from hpcdd.specs import METHODS, PREREQS, SAMPLERS, MethodSpec, PrereqRef, SamplerSpec
from hpcdd.specs.base import check_flat_keys, load_plugins, param_names
from hpcdd.specs.dsa import check_strategy, default_strategy

NESTED = ("params", "sampler_params")
"""RunConfig fields that hold the method's / sampler's own parameters."""


@functools.cache
def run_fields() -> tuple[str, ...]:
    """RunConfig's own (top-level) fields, without the nested parameter mappings."""
    return tuple(n for n in field_names(RunConfig) if n not in NESTED)


@functools.cache
def _flat_key_sets() -> tuple[frozenset[str], frozenset[str]]:
    """(RunConfig's top-level fields, the ``eval_*`` keys) as sets, once."""
    return frozenset(run_fields()), frozenset(eval_flat_names())


def method_param_names() -> list[str]:
    """Every parameter name of every registered method (flat keys), sorted, unique."""
    return sorted({n for m in METHODS.names() for n in param_names(METHODS.get(m).params)})


def sampler_param_names() -> list[str]:
    return sorted({n for s in SAMPLERS.names() for n in param_names(SAMPLERS.get(s).params)})


def flat_names() -> list[str]:
    """Every flat config key: run fields, method and sampler parameters, evaluation keys."""
    return [*run_fields(), *method_param_names(), *sampler_param_names(), *eval_flat_names()]


def check_registries() -> None:
    """Parameter names never shadow run/eval keys, and method and sampler parameters never share
    a name, so every flat key has one owner (:func:`hpcdd.specs.base.check_flat_keys`, which also
    runs whenever a ``$HPCDD_PLUGINS`` module is loaded)."""
    load_plugins()
    check_flat_keys()


# ----------------------------------------------------------------------------------------------
# flat keys -> configs


def configs_from_flat(data: Mapping[str, Any], where: str = "config") -> tuple[RunConfig, EvalConfig]:
    """(RunConfig, EvalConfig), both unresolved, from flat user keys (and/or nested ``params`` /
    ``sampler_params`` mappings, as config.yaml stores them). Unknown keys raise ``ConfigError``.

    For a generator method, ``ipc`` (given or its default) is how many images per class its
    evaluation draws, so it becomes ``eval_ipc`` (unless that is given): one generator serves every ipc.
    """
    run, ev, _method, _sampler = _configs_from_flat(data, where)
    return run, ev


def _configs_from_flat(data: Mapping[str, Any],
                       where: str) -> tuple[RunConfig, EvalConfig, MethodSpec, SamplerSpec]:
    """:func:`configs_from_flat`, and the method's and sampler's specs it looked up."""
    if not isinstance(data, collections.abc.Mapping):
        raise ConfigError(f"{where} must be a mapping of config keys, got {type(data).__name__}")
    run: dict[str, Any] = {}
    ev: dict[str, Any] = {}
    nested = {name: _mapping(data.get(name), f"{where}: {name}") for name in NESTED}
    flat_params: dict[str, dict[str, Any]] = {name: {} for name in NESTED}
    top, evals = _flat_key_sets()
    method = METHODS.get(_name(data.get("method", RunConfig.method), "method", where))
    sampler = SAMPLERS.get(_name(data.get("sampler", RunConfig.sampler), "sampler", where))
    method_keys, sampler_keys = _names(method.params), _names(sampler.params)
    unknown = []
    for key, value in data.items():
        if key in NESTED:
            continue
        if key in top:
            run[key] = value
        elif key in evals:
            ev[key[len(EVAL_PREFIX):]] = value
        elif key in method_keys:
            flat_params["params"][key] = value
        elif key in sampler_keys:
            flat_params["sampler_params"][key] = value
        elif value is None and (key in method_param_names() or key in sampler_param_names()):
            continue  # another method's parameter set to null (e.g. a zip row): not applicable
        else:
            unknown.append(str(key))
    if unknown:
        raise ConfigError(_unknown_message(unknown, method, sampler.name, where))
    for name in NESTED:
        both = sorted(set(nested[name]) & set(flat_params[name]))
        if both:
            raise ConfigError(f"{where}: {', '.join(both)} set both flat and under {name}")
        run[name] = {**nested[name], **flat_params[name]}
    if method.output == "generator" and "ipc" not in ev and run.get("ipc", RunConfig.ipc) is not None:
        ev["ipc"] = run.get("ipc", RunConfig.ipc)
    run_cfg, ev_cfg = from_dict(RunConfig, run, where=where), from_dict(EvalConfig, ev, where=where)
    return run_cfg, ev_cfg, method, sampler


@functools.cache
def _names(params: type) -> frozenset[str]:
    """The parameter names of a parameter dataclass, as a set (once per class)."""
    return frozenset(param_names(params))


def _name(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: config key {key!r} must be a name, got {brief(value)}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, collections.abc.Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _unknown_message(unknown: list[str], method: MethodSpec, sampler: str, where: str) -> str:
    owned = [n for n in unknown if n in method_param_names() or n in sampler_param_names()]
    if owned:
        mine = ", ".join(param_names(method.params)) or "none"
        return (f"{where}: {', '.join(owned)} is not a parameter of method {method.name} or sampler "
                f"{sampler} (method {method.name} parameters: {mine})")
    return f"unknown key(s) in {where}: {brief(', '.join(unknown))}"


# ----------------------------------------------------------------------------------------------
# resolution and identity


def resolve(cfg: RunConfig) -> RunConfig:
    """The config that actually runs: method defaults filled, parameters complete and checked.

    Pure and torch-free (dataset and net names are checked by :func:`check_names`).
    """
    return _resolve(cfg, METHODS.get(cfg.method), SAMPLERS.get(cfg.sampler))


def _resolve(cfg: RunConfig, method: MethodSpec, sampler: SamplerSpec) -> RunConfig:
    if not method.samplers and cfg.sampler != "random":
        raise ConfigError(f"method {cfg.method} draws no real images, so it takes no sampler "
                          f"(got sampler {cfg.sampler!r})")
    updates: dict[str, Any] = {k: v for k, v in method.defaults.items() if getattr(cfg, k) is None}
    updates.update(method.fixed)
    if method.output == "generator":
        updates["ipc"] = None  # set per evaluation
    params = from_dict(method.params, cfg.params, where=f"method {cfg.method} parameters")
    sparams = from_dict(sampler.params, cfg.sampler_params, where=f"sampler {cfg.sampler} parameters")
    updates["params"] = to_dict(params)
    updates["sampler_params"] = to_dict(sparams)
    if cfg.dsa_strategy is None:
        updates["dsa_strategy"] = default_strategy(cfg.dataset)
    else:
        check_strategy(cfg.dsa_strategy)
    # dataclasses.replace, without its generic per-field bookkeeping (every field is an init field)
    out = type(cfg)(**{**{n: getattr(cfg, n) for n in field_names(type(cfg))}, **updates})
    if method.output == "images" and out.ipc is None:
        raise ConfigError(f"method {cfg.method} needs ipc (images per class)")
    if method.check is not None:
        method.check(out)
    return out


def run_id(cfg: RunConfig) -> str:
    """12-hex-digit identity of a *resolved* config: hash of its non-default values, with the
    method's and sampler's parameters compared to their own defaults."""
    return _run_id(cfg, METHODS.get(cfg.method), SAMPLERS.get(cfg.sampler))


def _run_id(cfg: RunConfig, method: MethodSpec, sampler: SamplerSpec) -> str:
    canon = non_default(cfg, skip=NESTED)
    for name, cls in (("params", method.params), ("sampler_params", sampler.params)):
        changed = non_default(from_dict(cls, getattr(cfg, name), where=f"{cfg.method} {name}"))
        if changed:
            canon[name] = changed
    return identity_hash(canon)


def resolve_eval(ev: EvalConfig, run: RunConfig) -> EvalConfig:
    """Check an evaluation against the (resolved) run it evaluates."""
    return _resolve_eval(ev, run, METHODS.get(run.method))


def _resolve_eval(ev: EvalConfig, run: RunConfig, method: MethodSpec) -> EvalConfig:
    if method.output == "images":
        if ev.kind == "resample":
            raise ConfigError(f"eval_kind resample draws fresh images from a generator; method "
                              f"{run.method} distils a fixed image set (use eval_kind fixed)")
        if ev.ipc is not None and ev.ipc != run.ipc:
            raise ConfigError(f"eval_ipc {ev.ipc} differs from the run's ipc {run.ipc}: a fixed "
                              "image set is evaluated as distilled")
    elif ev.ipc is None:
        raise ConfigError(f"method {run.method} distils a generator: give the images per class "
                          "to draw for evaluation with eval_ipc (or ipc)")
    return ev


def eval_id(ev: EvalConfig) -> str:
    """12-hex-digit identity of an evaluation (hash of its non-default values)."""
    return identity_hash(non_default(ev))


def resolve_point(data: Mapping[str, Any], where: str = "config") -> tuple[RunConfig, EvalConfig, str, str]:
    """(run, evaluation, run_id, eval_id) of flat keys: :func:`configs_from_flat`, :func:`resolve`,
    :func:`resolve_eval` and the identities in one go, the registries asked once (grid points)."""
    run, ev, method, sampler = _configs_from_flat(data, where)
    run = _resolve(run, method, sampler)
    if run.method != method.name:  # a method's fixed values never change the names; if one did,
        method = METHODS.get(run.method)  # ask the registries as the separate calls would
    if run.sampler != sampler.name:
        sampler = SAMPLERS.get(run.sampler)
    ev = _resolve_eval(ev, run, method)
    return run, ev, _run_id(run, method, sampler), eval_id(ev)


def effective_ipc(run: RunConfig, ev: EvalConfig) -> int | None:
    """Images per class the evaluation trains on."""
    return ev.ipc if ev.ipc is not None else run.ipc


# ----------------------------------------------------------------------------------------------
# prerequisites


def prerequisites(cfg: RunConfig) -> list[PrereqRef]:
    """The prerequisite artefacts a resolved config needs, in build order."""
    method = METHODS.get(cfg.method)
    return list(method.prerequisites(cfg)) if method.prerequisites else []


def prereq_id(ref: PrereqRef) -> str:
    return identity_hash({"kind": ref.kind, **non_default(ref.config)})


def prereq_from_dict(kind: str, data: Mapping[str, Any], where: str = "prerequisite") -> PrereqRef:
    spec = PREREQS.get(kind)
    return PrereqRef(kind, from_dict(spec.config, data, where=where))


# ----------------------------------------------------------------------------------------------
# names that need the torch-side registries, and flat rows


def check_names(cfg: RunConfig, evals: Iterable[EvalConfig] = ()) -> None:
    """Dataset and net names exist (imports the data and net registries, hence torch)."""
    from hpcdd.data import DATASETS
    from hpcdd.nets import NETS

    DATASETS.get(cfg.dataset)
    NETS.get(cfg.net)
    for ev in evals:
        for name in ev.models:
            NETS.get(name)


def flat_run(cfg: RunConfig) -> dict[str, Any]:
    """The run's flat keys (result rows, CSV columns): fields, then its parameters by name."""
    d = to_dict(cfg)
    out = {k: d[k] for k in run_fields()}
    out.update(d["params"])
    out.update(d["sampler_params"])
    return out


__all__ = [
    "configs_from_flat", "resolve", "run_id", "resolve_eval", "eval_id", "resolve_point", "effective_ipc",
    "prerequisites", "prereq_id", "prereq_from_dict", "check_names", "flat_run", "flat_names",
    "run_fields", "check_registries", "method_param_names", "sampler_param_names", "NESTED",
]
