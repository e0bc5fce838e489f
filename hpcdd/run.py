"""``run_one(cfg, run_dir)``: the single job entry point used by every executor.

In order: write the resolved ``config.yaml``; resume from the newest valid checkpoint; distill,
checkpointing atomically every ``checkpoint_every`` iterations (and when asked to stop);
save ``synset.pt``; evaluate; write ``result.json``; write ``done`` last.

Run dir layout::

    config.yaml      the resolved RunConfig (identity = hpcdd.config.run_id of it)
    log.txt          one line per event (start, resume, checkpoint, finish, error)
    metrics.jsonl    {"it", "loss", ...} per iteration; {"it", "eval_acc", ...} periodic evals
    checkpoint/      ckpt-<it>.pt, the newest two kept
    synset.pt        {"images", "labels", "run_id", "info"} (torch.load(weights_only=True))
    result.json      one flat row (schema in README.md, 'The run dir')
    done             written last; its presence means result.json is complete
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml
from tqdm.auto import tqdm

from hpcdd.config import ExecConfig, RunConfig, from_dict, resolve, run_id, to_dict
from hpcdd.data import load_dataset
from hpcdd.distill import METHODS, SyntheticSet
from hpcdd.errors import CheckpointError, ConfigError, NonFiniteLossError, RunDirError
from hpcdd.evaluate import evaluate_synset, flat_metrics
from hpcdd.nets import build as build_net
from hpcdd.io import (
    append_line, atomic_torch_save, atomic_write_json, atomic_write_text, atomic_write_yaml,
    now_utc, read_jsonl, try_load_json, try_torch_load,
)
from hpcdd.runtime.accel import make_accelerator, peak_memory_mb
from hpcdd.runtime.checkpoint import load_latest, save_checkpoint
from hpcdd.runtime.malloc import tune_malloc
from hpcdd.runtime.preempt import Interrupted
from hpcdd.runtime.provenance import provenance
from hpcdd.select import SAMPLERS


# ----------------------------------------------------------------------------------------------
# run-dir helpers


def log(run_dir: Path, msg: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    append_line(run_dir / "log.txt", f"{stamp} {msg}")


def read_config(run_dir: Path) -> RunConfig | None:
    """The RunConfig stored in a run dir, ``None`` if it has none."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"{path} is unreadable: {e.__class__.__name__}") from None
    return from_dict(RunConfig, data, where=str(path))


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / "done").exists() and try_load_json(Path(run_dir) / "result.json") is not None


def ensure_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and check that files can be written in it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run dir {run_dir}: {e.strerror}") from None


def check_run_dir(cfg: RunConfig, run_dir: Path, overwrite: bool = False) -> None:
    """Make sure ``run_dir`` is writable and free for ``cfg`` (resolved); writes no files.

    A dir holding another hpcdd run is refused unless ``overwrite`` (which empties it, keeping
    only the lock file); a non-empty dir that is not an hpcdd run dir is always refused
    (``--overwrite`` never deletes foreign files).
    """
    run_dir = Path(run_dir)
    ensure_writable(run_dir)
    existing = read_config(run_dir)
    if existing is None:
        if any(not p.name.startswith(".") and p.name != "log.txt" for p in run_dir.iterdir()):
            raise RunDirError(f"{run_dir} is not empty and is not an hpcdd run dir; choose another --out")
        return
    if run_id(existing) != run_id(cfg) and not overwrite:
        raise RunDirError(f"{run_dir} already holds a different run ({run_id(existing)}); "
                          "choose another --out or pass --overwrite")
    if overwrite:
        for p in run_dir.iterdir():
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    """Write ``config.yaml`` (the resolved config) unless the dir already has it."""
    if not (Path(run_dir) / "config.yaml").exists():
        atomic_write_yaml(Path(run_dir) / "config.yaml", to_dict(cfg))


def prepare_run_dir(cfg: RunConfig, run_dir: Path, overwrite: bool = False) -> None:
    """``check_run_dir`` then ``write_config``: a run dir ready to be submitted."""
    check_run_dir(cfg, run_dir, overwrite)
    write_config(cfg, run_dir)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``run_dir/.lock``: two processes never run in one dir at once."""
    with open(Path(run_dir) / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run_dir} is in use by another hpcdd process") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_synset(run_dir: Path) -> dict[str, Any]:
    """The saved ``synset.pt`` dict (images, labels, run_id, info, distill_seconds)."""
    path = Path(run_dir) / "synset.pt"
    state = try_torch_load(path)
    if not isinstance(state, dict) or "images" not in state or "labels" not in state:
        what = "missing" if not path.exists() else "corrupt"
        raise CheckpointError(f"{path} is {what}; rerun the distillation")
    return state


# ----------------------------------------------------------------------------------------------
# the job


def run_one(
    cfg: RunConfig,
    run_dir: str | Path,
    exec_cfg: ExecConfig = ExecConfig(),
    *,
    evaluate: bool = True,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Distill (resuming if possible), evaluate, and return the result row.

    Returns the existing row if the run is already done; ``None`` if ``evaluate`` is False.
    Raises ``Interrupted`` after checkpointing when ``should_stop()`` becomes true.
    ``overwrite`` deletes a previous hpcdd run in ``run_dir`` first (never foreign files).
    """
    cfg = resolve(cfg)
    run_dir = Path(run_dir)
    ensure_writable(run_dir)
    with run_dir_lock(run_dir):  # before any deletion: never clear a dir another process runs in
        check_run_dir(cfg, run_dir, overwrite)
        if is_done(run_dir):
            return try_load_json(run_dir / "result.json")
        tune_malloc()
        if exec_cfg.threads is not None:
            torch.set_num_threads(exec_cfg.threads)
        accelerator = make_accelerator(exec_cfg.deterministic)
        prov = provenance(accelerator.device)  # the code that runs: taken now, not at the end
        data = load_dataset(cfg.dataset, root=exec_cfg.data_root, download=exec_cfg.download,
                            im_size=cfg.im_size)
        for name in {cfg.net, *cfg.eval_models}:  # fail on a net/image-size mismatch up front
            build_net(name, data.info.channels, data.info.num_classes, data.info.im_size)
        smallest = min(len(idx) for idx in data.train.class_indices)
        if cfg.ipc > smallest:
            raise ConfigError(f"ipc {cfg.ipc} exceeds the smallest class of {cfg.dataset} "
                              f"({smallest} training images)")
        syn, seconds = _distill(cfg, run_dir, data, accelerator, exec_cfg, should_stop)
        if not evaluate:
            return None
        return _evaluate_and_record(cfg, run_dir, syn, data, accelerator.device, seconds, exec_cfg,
                                    prov, should_stop)


def _distill(cfg, run_dir, data, accelerator, exec_cfg, should_stop) -> tuple[SyntheticSet, float]:
    rid = run_id(cfg)
    synset_path = run_dir / "synset.pt"
    previous = try_torch_load(synset_path)
    if isinstance(previous, dict) and previous.get("run_id") == rid and "images" in previous:
        log(run_dir, "synset.pt present; skipping distillation")
        return SyntheticSet.from_state_dict(previous), float(previous.get("distill_seconds", 0.0))
    sampler = SAMPLERS.get(cfg.sampler)(data.train, cfg.seed)
    distiller = METHODS.get(cfg.method)(cfg, data.train, accelerator, sampler)
    write_config(cfg, run_dir)  # only now: the config has loaded data and built its nets
    ckpt_dir = run_dir / "checkpoint"
    state = load_latest(ckpt_dir, rid)
    start, elapsed = 0, 0.0
    if state is not None:
        distiller.load_state_dict(state["distiller"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        start, elapsed = int(state["it"]), float(state["distill_seconds"])
        _truncate_metrics(run_dir / "metrics.jsonl", start)
        log(run_dir, f"resumed at iteration {start}")
        append_line(run_dir / "metrics.jsonl", json.dumps({"event": "resume", "it": start}))
    else:
        log(run_dir, f"start run {rid}: {cfg.method} on {cfg.dataset} ipc {cfg.ipc}, {cfg.iterations} iterations")

    def checkpoint(it: int, seconds: float) -> None:
        save_checkpoint(ckpt_dir, it, {
            "run_id": rid, "distiller": distiller.state_dict(), "sampler": sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "distill_seconds": seconds,
        })

    t0 = time.perf_counter() - elapsed
    bar = tqdm(range(start, cfg.iterations), desc=f"{cfg.method} {rid}", disable=not exec_cfg.progress,
               initial=start, total=cfg.iterations)
    for it in bar:
        metrics = distiller.step(it)
        loss = metrics.get("loss", 0.0)
        if not math.isfinite(loss):
            msg = f"non-finite loss ({loss}) at iteration {it}; the last good checkpoint is kept in {ckpt_dir}"
            log(run_dir, msg)
            raise NonFiniteLossError(msg)
        append_line(run_dir / "metrics.jsonl", json.dumps({"it": it, **metrics}))
        bar.set_postfix(loss=f"{loss:.4g}")
        done_its = it + 1
        if exec_cfg.eval_every and done_its % exec_cfg.eval_every == 0:
            _quick_eval(cfg, run_dir, distiller.synthetic(), data, accelerator.device, done_its)
        stop = should_stop is not None and should_stop()
        if stop or done_its % exec_cfg.checkpoint_every == 0:
            checkpoint(done_its, time.perf_counter() - t0)
            log(run_dir, f"checkpoint at iteration {done_its}")
        if stop and done_its < cfg.iterations:
            log(run_dir, f"stopping after iteration {done_its} (preemption/timeout)")
            raise Interrupted(done_its)
    seconds = time.perf_counter() - t0
    syn = distiller.synthetic()
    if not torch.isfinite(syn.images).all():
        msg = f"the distilled images contain NaN/Inf; not saved (checkpoints kept in {ckpt_dir})"
        log(run_dir, msg)
        raise NonFiniteLossError(msg)
    atomic_torch_save(synset_path, {
        **syn.state_dict(), "run_id": rid, "distill_seconds": seconds,
        "info": dataclasses.asdict(data.info),
    })
    log(run_dir, f"distillation finished in {seconds:.1f}s; synset.pt written")
    return syn, seconds


def _truncate_metrics(path: Path, start: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone).

    Loss rows carry the iteration index (``it < start`` were done); eval rows carry the number
    of completed iterations (``it <= start`` were done).
    """
    rows = [r for r in read_jsonl(path)
            if int(r.get("it", 0)) < start or ("eval_acc" in r and int(r["it"]) == start)]
    if path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _quick_eval(cfg, run_dir, syn, data, device, it: int) -> None:
    """One model, 100 epochs: a cheap accuracy-vs-iterations signal for metrics.jsonl."""
    model = cfg.eval_models[0]
    res = evaluate_synset(syn, data.test, data.info, cfg, device, models=(model,), n=1, epochs=100,
                          purpose=f"quick-{it}", progress=False)
    append_line(run_dir / "metrics.jsonl", json.dumps(
        {"it": it, "eval_acc": res[model]["acc_mean"], "eval_model": model, "eval_epochs": 100}))


def _evaluate_and_record(cfg, run_dir, syn, data, device, distill_seconds, exec_cfg, prov,
                         should_stop=None) -> dict[str, Any]:
    rid = run_id(cfg)
    t0 = time.perf_counter()
    per_arch = evaluate_synset(syn, data.test, data.info, cfg, device, progress=exec_cfg.progress,
                               should_stop=should_stop)
    row = {
        "run_id": rid, "protocol": cfg.protocol, **to_dict(cfg), **flat_metrics(per_arch),
        "distill_seconds": round(distill_seconds, 3), "eval_seconds": round(time.perf_counter() - t0, 3),
        "peak_rss_mb": round(peak_memory_mb(device), 1), "iterations_done": cfg.iterations,
        **prov, "finished_at": now_utc(),
    }
    atomic_write_json(run_dir / "result.json", row)
    atomic_write_text(run_dir / "done", rid + "\n")
    log(run_dir, f"done: {cfg.protocol} acc {row['acc_mean']:.4f} +- {row['acc_std']:.4f}")
    return row


def evaluate_run(run_dir: str | Path, exec_cfg: ExecConfig = ExecConfig()) -> dict[str, Any]:
    """Evaluate an existing run dir's ``synset.pt`` by its config; writes result.json + done."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    if cfg is None:
        raise RunDirError(f"{run_dir} is not an hpcdd run dir (no config.yaml)")
    cfg = resolve(cfg)
    state = load_synset(run_dir)
    syn = SyntheticSet.from_state_dict(state)
    tune_malloc()
    with run_dir_lock(run_dir):
        accelerator = make_accelerator(exec_cfg.deterministic)
        prov = provenance(accelerator.device)
        data = load_dataset(cfg.dataset, root=exec_cfg.data_root, download=exec_cfg.download,
                            im_size=cfg.im_size)
        return _evaluate_and_record(cfg, run_dir, syn, data, accelerator.device,
                                    float(state.get("distill_seconds", 0.0)), exec_cfg, prov)
