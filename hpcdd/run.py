"""``run_one(cfg, run_dir)``: the single job entry point used by every executor.

In order: resolve the config; build (or reuse) its prerequisite artefacts; resume the
distillation from the newest valid checkpoint and step it to the end, checkpointing atomically;
save the artefact (``synset.pt`` or ``generator.pt``) and ``done``; then run each evaluation into
``eval/<eval_id>/``, saving every finished model at once. ``evaluate_run`` adds an evaluation to a
finished distillation without distilling again. The layout is :mod:`hpcdd.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hpcdd import prereq, rundir
from hpcdd.artefact import Source, load_source
from hpcdd.catalog import (
    check_names, effective_ipc, eval_id, flat_run, prereq_id, prerequisites, resolve, resolve_eval,
    run_id,
)
from hpcdd.config import EvalConfig, ExecConfig, RunConfig, eval_flat, from_dict, to_dict
from hpcdd.data import Dataset, load_dataset
from hpcdd.errors import ConfigError, HpcddError, NonFiniteLossError, RunDirError
from hpcdd.evaluate import check_synset, evaluate_source, flat_metrics
from hpcdd.evalspread import evaluate_spread
from hpcdd.io import clean_stale_tmp, now_utc, read_jsonl, try_load_json
from hpcdd.nets import build as build_net
from hpcdd.runtime.accel import make_accelerator, peak_memory_mb
from hpcdd.runtime.dist import Dist, dist_of
from hpcdd.runtime.loop import run_steps
from hpcdd.runtime.process import setup_process
from hpcdd.runtime.provenance import provenance
from hpcdd.runtime.writer import RunWriter, writer_for
from hpcdd.seeding import generator
from hpcdd.select.samplers import build_sampler
from hpcdd.specs import METHODS, SAMPLERS, load_impl

ShouldStop = Callable[[], bool] | None


@dataclasses.dataclass
class _Context:
    """What one process set up for a run: device, data, provenance, timings, and the writer of its
    run dir (a real one on the main process only, :mod:`hpcdd.runtime.writer`)."""

    accelerator: Any
    data: Dataset
    prov: dict[str, Any]
    exec_cfg: ExecConfig
    t_start: float
    dist: Dist
    writer: RunWriter | None = None


def run_one(
    cfg: RunConfig,
    run_dir: str | Path,
    exec_cfg: ExecConfig = ExecConfig(),
    *,
    evals: Sequence[EvalConfig] = (EvalConfig(),),
    evaluate: bool = True,
    should_stop: ShouldStop = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Distill (resuming if possible), then run each evaluation; returns their result rows.

    Finished stages are skipped: a done distillation is not redone, a done evaluation returns its
    row. Raises ``Interrupted`` after checkpointing when ``should_stop()`` becomes true.
    ``overwrite`` deletes a previous hpcdd run in ``run_dir`` first (only hpcdd's own files).
    """
    t_start = time.perf_counter()
    cfg = resolve(cfg)
    evals = [resolve_eval(ev, cfg) for ev in evals] if evaluate else []
    rid = run_id(cfg)
    run_dir = Path(run_dir)
    if run_dir.is_dir():  # refuse before loading any data or creating any file
        rundir.check_free(run_dir, rid, overwrite, clear_now=False)
    finished = rundir.is_done(run_dir) and not overwrite and rundir.read_mark(run_dir) is not None
    if finished and all(rundir.eval_done(run_dir, eval_id(ev)) for ev in evals):
        return [rundir.read_result(run_dir, eval_id(ev)) for ev in evals]
    ctx = _setup(cfg, evals, exec_cfg, t_start)  # loads data and checks every name before any file
    ctx.writer = writer_for(run_dir, ctx.dist)

    def prepare() -> None:
        rundir.check_free(run_dir, rid, overwrite)
        clean_stale_tmp(run_dir, recursive=True)
        rundir.write_identity(run_dir, rid, cfg)

    with ctx.writer.session(prepare):  # rank 0 locks and prepares the dir; the others wait
        try:
            source, meta = _distilled(cfg, rid, run_dir, ctx, should_stop)
            return [_evaluate(cfg, ev, run_dir, source, meta, ctx, should_stop) for ev in evals]
        except HpcddError as e:
            _log_error(ctx.writer, e)
            raise


def evaluate_run(run_dir: str | Path, ev: EvalConfig = EvalConfig(), exec_cfg: ExecConfig = ExecConfig(),
                 *, should_stop: ShouldStop = None) -> dict[str, Any]:
    """Add the evaluation ``ev`` to a finished distillation (never distils); returns its row."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    cfg = rundir.read_config(run_dir)
    if cfg is None:
        raise RunDirError(f"{run_dir} is not an hpcdd run dir (no run.json / config.yaml)")
    if not rundir.is_done(run_dir):
        raise RunDirError(f"{run_dir} has not finished distilling; run 'hpcdd distill' (or the sweep) first")
    cfg = resolve(cfg)
    _check_identity(run_dir, cfg)
    ev = resolve_eval(ev, cfg)
    if rundir.eval_done(run_dir, eval_id(ev)):
        return rundir.read_result(run_dir, eval_id(ev))
    ctx = _setup(cfg, [ev], exec_cfg, t_start)
    ctx.writer = writer_for(run_dir, ctx.dist)
    # a shared lock: other evaluations of this run may run beside this one (each holds its own
    # eval dir, see _evaluate), a distillation may not; under it only the run dir's top level is
    # cleaned (what an interrupted distillation left), never another evaluation's files
    with ctx.writer.session(lambda: clean_stale_tmp(run_dir), lock=functools.partial(rundir.lock, shared=True)):
        source, meta = _load_artefact(cfg, run_dir)
        return _evaluate(cfg, ev, run_dir, source, meta, ctx, should_stop)


def _check_identity(run_dir: Path, cfg: RunConfig) -> None:
    """The (resolved) ``config.yaml`` must still hash to the run id that ``run.json`` records: a
    config edited after distilling would file results under a run that was never distilled."""
    marked = (rundir.read_mark(run_dir) or {}).get("run_id")
    if marked != run_id(cfg):
        raise RunDirError(f"{run_dir / rundir.CONFIG} is run {run_id(cfg)}, but {run_dir} was distilled "
                          f"as run {marked} (run.json): the config was edited after distilling; "
                          "not evaluated")


# ----------------------------------------------------------------------------------------------
# set-up


def _setup(cfg: RunConfig, evals: Sequence[EvalConfig], exec_cfg: ExecConfig, t_start: float) -> _Context:
    check_names(cfg, evals)
    threads = setup_process(exec_cfg.threads)
    accelerator = make_accelerator(exec_cfg.deterministic, exec_cfg.dist_timeout_s, threads)
    prov = provenance(accelerator.device)  # the code that runs: taken now, not at the end
    data = load_dataset(cfg.dataset, root=exec_cfg.data_root, download=exec_cfg.download, im_size=cfg.im_size)
    info = data.info
    for name in {cfg.net, *(m for ev in evals for m in ev.models)}:  # net/image-size mismatch: now
        build_net(name, info.channels, info.num_classes, info.im_size)
    smallest = min(len(idx) for idx in data.train.class_indices)
    method = METHODS.get(cfg.method)
    for ipc in {cfg.ipc, *(effective_ipc(cfg, ev) for ev in evals)} - {None}:
        if ipc > smallest and method.output == "images":
            raise ConfigError(f"ipc {ipc} exceeds the smallest class of {cfg.dataset} "
                              f"({smallest} training images)")
    sampler = SAMPLERS.get(cfg.sampler)
    if sampler.check is not None and method.samplers:
        params = from_dict(sampler.params, cfg.sampler_params, where=f"sampler {cfg.sampler}")
        sampler.check(params, method.per_class(cfg, info.num_classes), smallest)
    if method.preflight is not None:  # the method's own checks that need torch or the data
        load_impl(method.preflight)(cfg, data, exec_cfg)
    return _Context(accelerator, data, prov, exec_cfg, t_start, dist_of(accelerator))


def _log_error(writer: RunWriter, e: HpcddError) -> None:
    """Record a user-facing error in log.txt (README: the log keeps errors); a non-finite loss
    logs its own line where it is found. Never masks the error itself."""
    if isinstance(e, NonFiniteLossError):
        return
    try:
        writer.log(f"error: {e}")
    except OSError:
        pass


def slurm_ids() -> dict[str, str]:
    """The Slurm job and array task running this process (empty outside Slurm)."""
    keys = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
            "slurm_array_task_id": "SLURM_ARRAY_TASK_ID"}
    return {k: os.environ[v] for k, v in keys.items() if os.environ.get(v)}


# ----------------------------------------------------------------------------------------------
# distillation


def _distilled(cfg: RunConfig, rid: str, run_dir: Path, ctx: _Context,
               should_stop: ShouldStop) -> tuple[Source, dict[str, Any]]:
    """The run's artefact: loaded if the distillation is done, else distilled now."""
    out = ctx.writer
    if ctx.dist.from_main(rundir.is_done(run_dir)):
        out.log("distillation done; loading its artefact")
        return _load_artefact(cfg, run_dir)
    artefacts = _prerequisites(cfg, run_dir, ctx, should_stop)
    method = METHODS.get(cfg.method)
    t0 = time.perf_counter()
    sampler = build_sampler(cfg, ctx.data.train)
    distiller = load_impl(method.impl)(cfg, ctx.data.train, ctx.accelerator, sampler, artefacts)
    build_seconds = time.perf_counter() - t0  # coreset selection happens here
    if not (run_dir / rundir.CHECKPOINTS).exists():
        out.log(f"start run {rid}: {cfg.method} on {cfg.dataset}"
                   + (f" ipc {cfg.ipc}" if cfg.ipc else "") + f", {cfg.iterations} iterations")
    job = _WithSampler(distiller, sampler)
    quick = _quick_eval_hook(cfg, run_dir, distiller, ctx)
    if quick is not None and not ctx.dist.from_main(any(r.get("it") == 0 and "eval_acc" in r
                                                        for r in read_jsonl(run_dir / rundir.METRICS))):
        quick(0)  # the accuracy at initialisation
    loop_seconds, _ = run_steps(job, total=cfg.iterations, run_dir=run_dir, ident=rid, exec_cfg=ctx.exec_cfg,
                                should_stop=should_stop, desc=f"{cfg.method} {rid}", after_step=quick,
                                writer=out)
    source = distiller.source()
    meta = {"run_id": rid, "info": dataclasses.asdict(ctx.data.info), "output": method.output}
    _check_finite(source, run_dir, out)
    out.torch(rundir.artefact_path(run_dir, method.output), {**source.state_dict(), **meta})
    seconds = build_seconds + loop_seconds
    timing = {"distill_seconds": round(seconds, 3), "iterations_done": cfg.iterations,
              "match_seconds": round(loop_seconds - sampler.seconds(), 3),  # the loop minus sampling
              "sampler": sampler.info(), "method_info": distiller.info(), "finished_at": now_utc()}
    out.json(run_dir / rundir.DONE, {"run_id": rid, **timing})
    out.log(f"distillation finished in {seconds:.1f}s; {rundir.ARTEFACT_FILES[method.output]} written")
    return source, {**meta, **timing}


class _WithSampler:
    """The distiller and its sampler, stepped and checkpointed as one job."""

    def __init__(self, distiller: Any, sampler: Any) -> None:
        self.distiller, self.sampler = distiller, sampler

    def step(self, it: int) -> dict[str, float]:
        return self.distiller.step(it)

    def state_dict(self) -> dict[str, Any]:
        return {"distiller": self.distiller.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.distiller.load_state_dict(state["distiller"])
        self.sampler.load_state_dict(state["sampler"])


def _check_finite(source: Source, run_dir: Path, out: RunWriter) -> None:
    bad = [k for k, v in source.state_dict().items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        msg = (f"the distilled artefact contains NaN/Inf ({', '.join(bad)}); not saved "
               f"(checkpoints kept in {run_dir / rundir.CHECKPOINTS})")
        out.log(msg)
        raise NonFiniteLossError(msg)


def _load_artefact(cfg: RunConfig, run_dir: Path) -> tuple[Source, dict[str, Any]]:
    output = METHODS.get(cfg.method).output
    path = rundir.artefact_path(run_dir, output)
    source, state = load_source(path, output)
    if state.get("run_id") not in (None, run_id(cfg)):
        raise RunDirError(f"{path} was distilled as run {state.get('run_id')}, but {run_dir} holds run "
                          f"{run_id(cfg)}; not evaluated")
    done = try_load_json(run_dir / rundir.DONE)
    timing = done if isinstance(done, dict) else {}
    return source, {**timing, "info": state.get("info"), "output": output}


def _prerequisites(cfg: RunConfig, run_dir: Path, ctx: _Context, should_stop: ShouldStop) -> dict[str, Path]:
    """Build (in this process) or reuse each prerequisite; record which were used."""
    refs = prerequisites(cfg)
    if not refs:
        return {}
    missing = [r for r in refs if not rundir.is_done(prereq.ref_dir(r, ctx.exec_cfg))]
    if missing and ctx.dist.is_main:  # each then prints its own steps and a time estimate (prereq.CostReport)
        kinds = sorted({r.kind for r in missing})
        print(f"hpcdd: {cfg.method} needs {len(refs)} prerequisite(s) ({', '.join(kinds)}); "
              f"{len(missing)} to build first", file=sys.stderr, flush=True)
    dirs: dict[str, Path] = {}
    for ref in refs:
        dirs[ref.role or ref.kind] = prereq.build(ref, ctx.exec_cfg, accelerator=ctx.accelerator,
                                                  should_stop=should_stop, dist=ctx.dist)
        ctx.writer.log(f"prerequisite {ref.kind} {prereq_id(ref)}: {dirs[ref.role or ref.kind]}")
    ctx.writer.json(run_dir / rundir.PREREQS, {role: str(p) for role, p in dirs.items()})
    return dirs


def _quick_eval_hook(cfg: RunConfig, run_dir: Path, distiller: Any, ctx: _Context) -> Callable[[int], None] | None:
    """``eval_point_n`` models, 100 epochs, at iteration 0 and every ``eval_every`` iterations,
    at ``eval_points`` evenly spaced ones and after the ``eval_at`` iterations: an
    accuracy-vs-iterations curve in metrics.jsonl (mean, each model, and the seconds it took)."""
    exe = ctx.exec_cfg
    due = quick_eval_points(cfg.iterations, exe.eval_every, exe.eval_points, exe.eval_at)
    if not due:
        return None
    model = "convnet3" if cfg.net.startswith("convnet") else cfg.net
    ev = EvalConfig(models=(model,), n=exe.eval_point_n, epochs=100)

    def hook(done: int) -> None:
        if done not in due:
            return
        from hpcdd.artefact import ImageSource

        t0 = time.perf_counter()
        source = ImageSource(distiller.synthetic(cfg.ipc or 10))
        res = evaluate_source(source, ctx.data.test, ctx.data.info, ev, seed=cfg.seed, dataset=cfg.dataset,
                              ipc=None, device=ctx.accelerator.device, purpose=f"quick-{done}",
                              progress=False, ensemble=ctx.exec_cfg.eval_ensemble,
                              ensemble_max=ctx.exec_cfg.eval_ensemble_max)[model]
        ctx.writer.metric(
            {"it": done, "eval_acc": res["acc_mean"], "eval_accs": res["accs"], "eval_model": model,
             "eval_epochs": 100, "eval_seconds": round(time.perf_counter() - t0, 3)})

    return hook


def quick_eval_points(total: int, every: int, points: int, at: Sequence[int] = ()) -> set[int]:
    """The completed-iteration counts at which quick evals run (always 0 when any run)."""
    due: set[int] = set()
    if every:
        due |= set(range(0, total + 1, every))
    if points:
        due |= {round(i * total / points) for i in range(points + 1)}
    if at:
        due |= {0, *(i for i in at if i <= total)}
    return due


# ----------------------------------------------------------------------------------------------
# evaluation


def _evaluate(cfg: RunConfig, ev: EvalConfig, run_dir: Path, source: Source, meta: dict[str, Any],
              ctx: _Context, should_stop: ShouldStop) -> dict[str, Any]:
    eid = eval_id(ev)
    out, writer = rundir.eval_dir(run_dir, eid), ctx.writer
    if ctx.dist.from_main(rundir.eval_done(run_dir, eid)):
        return rundir.read_result(run_dir, eid)
    ipc = effective_ipc(cfg, ev)
    where = str(rundir.artefact_path(run_dir, meta["output"]))
    check_synset(source.sample(ipc, generator(cfg.seed, "check")), ctx.data.info, where, ipc=ipc)  # before any file
    writer.mkdir(out)
    # this evaluation's dir is this process's alone (another task evaluating it fails in one line)
    with writer.session(lambda: clean_stale_tmp(out, recursive=True), where=out):
        if ctx.dist.from_main(rundir.eval_done(run_dir, eid)):  # finished while this one waited to start
            return rundir.read_result(run_dir, eid)
        if not (out / rundir.CONFIG).exists():
            writer.yaml(out / rundir.CONFIG, to_dict(ev))
        finished = ctx.dist.from_main(_finished_models(run_dir, eid, ev))
        if finished:
            writer.log(f"evaluation {eid}: resuming with {len(finished)} model(s) already done")
        t0 = time.perf_counter()

        def saved(arch: str, k: int, acc: float) -> None:
            writer.json(rundir.model_file(run_dir, eid, arch, k),
                        {"arch": arch, "k": k, "acc": acc, "finished_at": now_utc()})
            writer.log(f"evaluation {eid}: {arch} model {k + 1}/{ev.n} acc {acc:.4f}")

        per_arch = evaluate_spread(
            source, ctx.data.test, ctx.data.info, ev, dist=ctx.dist, seed=cfg.seed, dataset=cfg.dataset, ipc=ipc,
            device=ctx.accelerator.device, finished=finished, on_model=saved,
            progress=ctx.exec_cfg.progress and ctx.dist.is_main, should_stop=should_stop, where=where,
            ensemble=ctx.exec_cfg.eval_ensemble, ensemble_max=ctx.exec_cfg.eval_ensemble_max,
            log=lambda msg: writer.log(f"evaluation {eid}: {msg}"))
        row = {
            "run_id": run_id(cfg), "eval_id": eid, "protocol": ev.protocol, **flat_run(cfg), "ipc": ipc,
            **eval_flat(ev), **flat_metrics(per_arch),
            "distill_seconds": meta.get("distill_seconds"), "match_seconds": meta.get("match_seconds"),
            "eval_seconds": round(time.perf_counter() - t0, 3),
            "wall_seconds": round(time.perf_counter() - ctx.t_start, 3),
            "peak_rss_mb": round(peak_memory_mb(ctx.accelerator.device), 1),
            "iterations_done": meta.get("iterations_done"), **_sampler_columns(meta), **_method_columns(meta),
            **slurm_ids(), **ctx.prov, "finished_at": now_utc(),
        }
        writer.json(out / rundir.RESULT, row)
        writer.mark_done(out, eid)
        writer.log(f"evaluation {eid} done: {ev.protocol} acc {row['acc_mean']:.4f} +- {row['acc_std']:.4f}")
        return row


def _finished_models(run_dir: Path, eid: str, ev: EvalConfig) -> dict[tuple[str, int], float]:
    out = {}
    for arch in ev.models:
        for k in range(ev.n):
            data = try_load_json(rundir.model_file(run_dir, eid, arch, k))
            if isinstance(data, dict) and isinstance(data.get("acc"), (int, float)):
                out[(arch, k)] = float(data["acc"])
    return out


def _sampler_columns(meta: dict[str, Any]) -> dict[str, Any]:
    info = meta.get("sampler") or {}
    return {f"sampler_{k}": v for k, v in info.items()}


def _method_columns(meta: dict[str, Any]) -> dict[str, Any]:
    info = meta.get("method_info") or {}
    return {f"distill_{k}": v for k, v in info.items()}


__all__ = ["run_one", "evaluate_run", "slurm_ids"]
