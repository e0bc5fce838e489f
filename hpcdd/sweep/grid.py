"""Grid files: a base config plus what varies, expanded into a deterministic list of cells.

A grid file (YAML) holds::

    name: fmnist-dm                       # the sweep's name (default: the file's stem)
    base: {method: dm, dataset: fashionmnist, ipc: 10}
    grid: {ipc: [1, 10, 50], sampler: [random]}   # Cartesian product; or a LIST of such
                                                  # dicts (the union of their products)
    zip: {method: [dm, random], lr_img: [1.0, null]}   # lists zipped together, crossed with grid
    seeds: 3                              # seed 0..2, or an explicit list [0, 5]
    evals:                                # optional: evaluations of every cell (flat eval_* keys)
      - {eval_epochs: 300}
      - {eval_models: [alexnet, vgg11]}
    separate_evals: false                 # true: evaluations run as their own arrays, afterwards
    exec: {checkpoint_every: 50}          # ExecConfig keys (not part of any identity)
    slurm: {partition: gpu, time_min: 240, ...}        # see SlurmSpec

Keys are flat config keys: RunConfig fields, the method's and sampler's parameters by name, and
``eval_*`` keys. Expansion is a pure function: grid dicts in file order, each dict's keys in file
order (the last key varies fastest), then the zip rows, then the seeds, then ``evals``. Each cell is
a (distillation, evaluation) pair; cells that share a distillation (e.g. a generator method at
several ipc, or several ``evals``) share one run dir and one distillation job. Prerequisites of the
runs are collected once each. Every problem raises ``ConfigError`` with one line, before anything
is submitted.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcdd.catalog import eval_id, flat_names, prereq_id, prerequisites, resolve_point, run_fields
from hpcdd.config import (
    EVAL_PREFIX, EvalConfig, ExecConfig, RunConfig, check_config, field_names, from_dict, plain,
)
from hpcdd.errors import ConfigError, brief
from hpcdd.specs import PrereqRef

TOP_LEVEL_KEYS = ("name", "base", "grid", "zip", "seeds", "evals", "separate_evals", "exec", "slurm")
SEED_KEY = "seed"
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
"""Sweep names: used in the Slurm job name (hpcdd-<name>) and RUNS_DIR/.sweeps/<name>.json."""
MAX_POINTS = 50_000
"""Grids larger than this are refused before expansion (``--max-runs`` raises the limit)."""


@dataclass(frozen=True)
class SlurmSpec:
    """Resources of every array task of a sweep (the ``slurm:`` block of a grid file)."""

    partition: str | None = None
    """Slurm partition (None: the cluster's default partition)."""
    gpus_per_task: int | None = None
    """GPUs per task (None: none requested)."""
    tasks_per_node: int = 1
    """Processes per node of one run (> 1: a multi-process run, one process per GPU; README
    'Multi-process runs'). Every task of the array gets this many."""
    nodes: int = 1
    """Nodes per run (a multi-node run: nodes x tasks_per_node processes)."""
    gpus_per_node: int | None = None
    """GPUs per node of one run (with tasks_per_node > 1 it must equal tasks_per_node; None: none,
    or gpus_per_task)."""
    cpus_per_task: int | None = None
    """CPU cores per task (None: the cluster's default, usually 1)."""
    mem_gb: float | None = None
    """Memory per task in GB (None: the cluster's default)."""
    time_min: int = 60
    """Time limit of one task in minutes (a timed-out task is requeued, see max_timeouts)."""
    array_parallelism: int = 32
    """At most this many tasks of one array run at once (``%N`` of ``--array``)."""
    qos: str | None = None
    """Slurm quality of service."""
    account: str | None = None
    """Slurm account to charge."""
    max_timeouts: int = 3
    """How many times a task that hits its time limit is requeued (submitit max_num_timeout)."""
    signal_delay_s: int = 90
    """USR2 is sent this many seconds before the time limit (the task checkpoints, requeues)."""
    additional: dict = field(default_factory=dict)
    """Extra ``#SBATCH --key=value`` lines, e.g. {constraint: a100}."""

    def __post_init__(self) -> None:
        try:
            check_config(self)
        except ConfigError as e:
            raise ConfigError(f"slurm {e}") from None
        for name in ("time_min", "array_parallelism", "tasks_per_node", "nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"slurm {name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_task", "gpus_per_node", "cpus_per_task", "mem_gb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"slurm {name} must be > 0, got {value}")
        if self.gpus_per_task is not None and self.gpus_per_node is not None:
            raise ConfigError("slurm: give gpus_per_task or gpus_per_node, not both")
        if self.gpus_per_node is not None and self.tasks_per_node > 1 and self.gpus_per_node != self.tasks_per_node:
            raise ConfigError(f"slurm tasks_per_node ({self.tasks_per_node}) must equal gpus_per_node "
                              f"({self.gpus_per_node}): one process per GPU")
        if self.gpus_per_task is not None and self.tasks_per_node > 1:
            raise ConfigError("slurm: a multi-process run (tasks_per_node > 1) asks for gpus_per_node "
                              "(= tasks_per_node), not gpus_per_task")
        if self.max_timeouts < 0 or self.signal_delay_s < 0:
            raise ConfigError("slurm max_timeouts and signal_delay_s must be >= 0")
        for key, value in self.additional.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
                raise ConfigError(
                    f"slurm additional must map option names to scalar values, got {brief(key)}: {brief(value)}"
                )
        # these strings become '#SBATCH' lines of a shell script: no line breaks, no spaces
        texts = {"partition": self.partition, "qos": self.qos, "account": self.account,
                 **{f"additional.{k}": v for k, v in self.additional.items()},
                 **{f"additional key {k!r}": k for k in self.additional}}
        for where, text in texts.items():
            if isinstance(text, str) and (not text.strip() or any(ch.isspace() for ch in text)):
                raise ConfigError(f"slurm {where} must be one word without spaces or line breaks, got {brief(text)}")


@dataclass(frozen=True)
class SweepCell:
    """One point of an expanded grid: a (distillation, evaluation) pair, one row of a table."""

    index: int
    """Position in the deterministic expansion order (0-based)."""
    run_id: str
    """Identity of the distillation; its run dir is ``RUNS_DIR/<run_id>``."""
    eval_id: str
    """Identity of the evaluation; its dir is ``RUNS_DIR/<run_id>/eval/<eval_id>``."""
    config: RunConfig
    """The resolved run config."""
    eval: EvalConfig
    """The resolved evaluation config."""
    point: dict = field(default_factory=dict)
    """The values this point took from grid, zip, seeds and evals (for tables)."""


@dataclass(frozen=True)
class SweepRun:
    """One distillation of a sweep and the evaluations the grid asks of it."""

    run_id: str
    """Identity (run dir name)."""
    config: RunConfig
    """The resolved config that runs."""
    evals: tuple[EvalConfig, ...]
    """Its evaluations, in grid order."""
    prereqs: tuple[str, ...] = ()
    """Keys (``<kind>/<id>``) of the prerequisites it needs."""

    @functools.cached_property
    def eval_ids(self) -> tuple[str, ...]:
        return tuple(eval_id(e) for e in self.evals)


@dataclass(frozen=True)
class SweepPrereq:
    """One prerequisite artefact of a sweep, shared by every run that needs it."""

    key: str
    """``<kind>/<id>``: also its directory under the artefact root."""
    ref: PrereqRef
    """Its kind and config."""


@dataclass(frozen=True)
class Sweep:
    """An expanded grid file."""

    name: str
    """The sweep's name (manifest ``RUNS_DIR/.sweeps/<name>.json``)."""
    cells: tuple[SweepCell, ...]
    """Every (distillation, evaluation) pair, in expansion order; unique."""
    runs: tuple[SweepRun, ...]
    """Every distillation, in order of first appearance; unique run ids."""
    prereqs: tuple[SweepPrereq, ...]
    """Every prerequisite the runs need, deduplicated, in order of first need."""
    axes: tuple[str, ...]
    """Config keys that vary (grid, zip, seed and evals keys), in file order."""
    exec: ExecConfig
    """Execution settings passed to every job (not part of identity)."""
    slurm: SlurmSpec
    """Resources of every array task."""
    source: str = ""
    """Where the grid came from (a file path), for messages."""
    separate_evals: bool = False
    """Evaluations run as their own array jobs after the distillations (else inside them)."""

    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.runs]


# ----------------------------------------------------------------------------------------------
# loading


def load_grid(path: str | Path, max_points: int = MAX_POINTS) -> Sweep:
    """Read, validate and expand the grid file at ``path``."""
    from hpcdd.yamlfile import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path, what="grid file")
    return expand_grid(data, default_name=path.stem, source=str(path), max_points=max_points)


def expand_grid(data: Any, default_name: str = "sweep", source: str = "grid",
                max_points: int = MAX_POINTS) -> Sweep:
    """Validate a parsed grid document and expand it into a ``Sweep`` (pure, deterministic)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    _reject_unknown(data, TOP_LEVEL_KEYS, f"{source}: unknown top-level key(s)")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"{source}: name must be letters, digits, '.', '_' or '-' "
                          f"(not starting with '.'), got {brief(name)}")
    base = _mapping(data.get("base"), f"{source}: base")
    blocks = _grid_blocks(data.get("grid"), source)
    zipped = _zip_rows(data.get("zip"), source)
    seeds = _seeds(data.get("seeds"), source)
    evals = _evals(data.get("evals"), source)
    separate = data.get("separate_evals", False)
    if not isinstance(separate, bool):
        raise ConfigError(f"{source}: separate_evals must be true or false, got {brief(separate)}")
    _check_keys(base, blocks, zipped, seeds, evals, source)
    _check_size(blocks, zipped, seeds, evals, source, max_points)
    exec_cfg = from_dict(ExecConfig, _mapping(data.get("exec"), f"{source}: exec"), where=f"{source} exec")
    slurm = _slurm_spec(data.get("slurm"), source)
    cells = _resolve_points(base, _points(blocks, zipped, seeds, evals), source)
    runs, prereqs = _runs_and_prereqs(cells)
    axes = _axes(blocks, zipped, seeds, evals)
    return Sweep(name=name, cells=tuple(cells), runs=runs, prereqs=prereqs, axes=axes, exec=exec_cfg,
                 slurm=slurm, source=source, separate_evals=separate)


# ----------------------------------------------------------------------------------------------
# validation helpers


def _reject_unknown(data: dict, allowed: tuple[str, ...] | list[str], what: str) -> None:
    unknown = [str(k) for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"{what}: {', '.join(unknown)} (allowed: {', '.join(allowed)})")


def _mapping(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _value_list(key: Any, values: Any, what: str) -> list:
    if not isinstance(values, list):
        raise ConfigError(f"{what} key {key!r} must be a list of values, got {brief(values)}")
    if not values:
        raise ConfigError(f"{what} key {key!r} is an empty list: the product would have no runs")
    return values


def _grid_blocks(value: Any, source: str) -> list[dict[str, list]]:
    """The ``grid:`` value as a list of {key: values} dicts (one dict: a one-element list)."""
    if value is None:
        return [{}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{source}: grid must be a mapping or a list of mappings")
    if not value:
        raise ConfigError(f"{source}: grid is an empty list: the product would have no runs")
    blocks = []
    for i, block in enumerate(value):
        where = f"{source}: grid" if len(value) == 1 else f"{source}: grid[{i}]"
        block = _mapping(block, where)
        blocks.append({k: _value_list(k, v, where) for k, v in block.items()})
    return blocks


def _zip_rows(value: Any, source: str) -> list[dict[str, Any]]:
    """The ``zip:`` block as rows: {a: [1, 2], b: [x, y]} -> [{a: 1, b: x}, {a: 2, b: y}]."""
    block = _mapping(value, f"{source}: zip")
    if not block:
        return [{}]
    lists = {k: _value_list(k, v, f"{source}: zip") for k, v in block.items()}
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ConfigError(f"{source}: zip lists must have equal lengths, got {shown}")
    keys = list(lists)
    return [dict(zip(keys, row)) for row in zip(*lists.values())]


def _seeds(value: Any, source: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{source}: seeds must be >= 1 (a count) or a list, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise ConfigError(f"{source}: seeds list has duplicates: {brief(value)}")
        return list(value)
    raise ConfigError(f"{source}: seeds must be a count (int >= 1) or a non-empty list of ints, got {brief(value)}")


def _evals(value: Any, source: str) -> list[dict[str, Any]]:
    """The ``evals:`` list: mappings of eval_* keys (one empty mapping when absent)."""
    if value is None:
        return [{}]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{source}: evals must be a non-empty list of mappings of eval_* keys")
    out = [_mapping(v, f"{source}: evals[{i}]") for i, v in enumerate(value)]
    allowed = [k for k in flat_names() if k.startswith("eval_")]
    for i, block in enumerate(out):
        _reject_unknown(block, allowed, f"{source}: unknown evaluation key(s) in evals[{i}]")
    return out


def _check_keys(base: dict, blocks: list[dict], zipped: list[dict], seeds: list[int] | None,
                evals: list[dict], source: str) -> None:
    """Every key is a flat config key; no key is set by two of grid, zip and seeds."""
    fields = flat_names()
    _reject_unknown(base, fields + ["params", "sampler_params"], f"{source}: unknown config key(s) in base")
    for block in blocks:
        _reject_unknown(block, fields, f"{source}: unknown config key(s) in grid")
    zip_keys = set(zipped[0])
    _reject_unknown(zipped[0], fields, f"{source}: unknown config key(s) in zip")
    for block in blocks:
        both = sorted(zip_keys & set(block))
        if both:
            raise ConfigError(f"{source}: key(s) {', '.join(both)} appear in both grid and zip")
    if seeds is not None:
        where = [w for w, keys in (("base", base), ("grid", set().union(*blocks)), ("zip", zip_keys))
                 if SEED_KEY in keys]
        if where:
            raise ConfigError(f"{source}: 'seeds' conflicts with the 'seed' key in {where[0]}")
    varied = set().union(*blocks) | zip_keys
    both = sorted(varied & set().union(*evals))
    if both:
        raise ConfigError(f"{source}: key(s) {', '.join(both)} appear in both evals and grid/zip")


def _check_size(blocks: list[dict], zipped: list[dict], seeds: list[int] | None, evals: list[dict],
                source: str, max_points: int) -> None:
    """Count the points before expanding any: a huge grid is refused at once, with its size."""
    n = sum(math.prod(len(v) for v in block.values()) for block in blocks)
    n *= len(zipped) * (len(seeds) if seeds else 1) * len(evals)
    if n > max_points:
        raise ConfigError(f"{source}: the grid has {n:,} points, more than the limit of {max_points:,} "
                          "(raise it with --max-runs if you mean it)")


def _slurm_spec(value: Any, source: str) -> SlurmSpec:
    block = _mapping(value, f"{source}: slurm")
    names = [f.name for f in dataclasses.fields(SlurmSpec)]
    _reject_unknown(block, names, f"{source}: unknown slurm key(s)")
    if block.get("additional") is None:
        block.pop("additional", None)
    return from_dict(SlurmSpec, block, where=f"{source} slurm")


# ----------------------------------------------------------------------------------------------
# expansion


def _points(blocks: list[dict[str, list]], zipped: list[dict], seeds: list[int] | None,
            evals: list[dict]):
    """Yield every point (a dict of varying values) in the documented order."""
    for block in blocks:
        keys = list(block)
        for values in itertools.product(*(block[k] for k in keys)):
            for row in zipped:
                for seed in seeds if seeds is not None else [None]:
                    for ev in evals:
                        point = {**dict(zip(keys, values)), **row}
                        if seed is not None:
                            point[SEED_KEY] = seed
                        yield {**point, **ev}


def _axes(blocks: list[dict], zipped: list[dict], seeds: list[int] | None,
          evals: list[dict]) -> tuple[str, ...]:
    axes: list[str] = []
    keys = [k for b in blocks for k in b] + list(zipped[0]) + ([SEED_KEY] if seeds else [])
    if len(evals) > 1:
        keys += [k for e in evals for k in e]
    for key in keys:
        if key not in axes:
            axes.append(key)
    return tuple(axes)


def _describe(point: dict) -> str:
    return "{" + ", ".join(f"{k}: {brief(v)}" for k, v in point.items()) + "}"


def _resolve_points(base: dict, points, source: str) -> list[SweepCell]:
    cells: list[SweepCell] = []
    seen: dict[tuple[str, str], int] = {}
    for i, point in enumerate(points):
        where = f"{source}: grid point {i} {_describe(point)}"
        try:
            run, ev, rid, eid = resolve_point({**base, **point}, where=where)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(source) else f"{where}: {msg}") from None
        key = (rid, eid)
        if key in seen:
            j = seen[key]
            raise ConfigError(
                f"{source}: grid points {j} {_describe(cells[j].point)} and {i} {_describe(point)} "
                f"resolve to the same run {key[0]} and evaluation {key[1]}; remove one of them"
            )
        seen[key] = i
        cells.append(SweepCell(index=i, run_id=key[0], eval_id=key[1], config=run, eval=ev, point=point))
    return cells


def _runs_and_prereqs(cells: list[SweepCell]) -> tuple[tuple[SweepRun, ...], tuple[SweepPrereq, ...]]:
    """The distinct distillations (with their evaluations) and prerequisites of the cells."""
    configs: dict[str, RunConfig] = {}
    evals: dict[str, list[EvalConfig]] = {}
    for cell in cells:
        configs.setdefault(cell.run_id, cell.config)
        evals.setdefault(cell.run_id, []).append(cell.eval)
    prereqs: dict[str, SweepPrereq] = {}
    runs = []
    for rid, cfg in configs.items():
        keys = []
        for ref in prerequisites(cfg):
            key = f"{ref.kind}/{prereq_id(ref)}"
            prereqs.setdefault(key, SweepPrereq(key, ref))
            keys.append(key)
        runs.append(SweepRun(rid, cfg, tuple(evals[rid]), tuple(keys)))
    return tuple(runs), tuple(prereqs.values())


def point_values(cell: SweepCell, axes: tuple[str, ...]) -> dict[str, Any]:
    """The cell's resolved value of each axis (lists shown comma-joined), for tables."""
    out = {}
    for key in axes:
        value = _resolved_value(cell, key)
        out[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return out


_MISSING = object()


def _resolved_value(cell: SweepCell, key: str) -> Any:
    """``{**flat_run(cell.config), **eval_flat(cell.eval)}.get(key, cell.point.get(key))`` without
    building those dicts: eval keys first, then sampler and method parameters, then run fields."""
    cfg = cell.config
    if key.startswith(EVAL_PREFIX) and key[len(EVAL_PREFIX):] in field_names(EvalConfig):
        return plain(getattr(cell.eval, key[len(EVAL_PREFIX):]))
    for nested in (cfg.sampler_params, cfg.params):
        value = nested.get(key, _MISSING)
        if value is not _MISSING:
            return plain(value)
    if key in run_fields():
        return plain(getattr(cfg, key))
    return cell.point.get(key)


__all__ = ["SlurmSpec", "Sweep", "SweepCell", "SweepRun", "SweepPrereq", "load_grid", "expand_grid",
           "point_values", "TOP_LEVEL_KEYS", "MAX_POINTS"]
