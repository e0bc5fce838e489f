"""The generative comparison at DiM's width on one lent GPU (H100/H200), in about 9 minutes.

Runs a grid file (default ``launch/generative_fmnist_gpu.yaml``: cgan, dim, global_local and random
on Fashion-MNIST, the rows of ``launch/generative_fmnist.yaml`` at GAN width 196) from source,
without Slurm or submitit: the shared pretraining first, then every distillation with its
evaluations, ``--workers`` at a time in processes sharing the GPU. Before it starts it times a few
GAN steps and, with ``--fit``, scales ``gan_steps`` and ``iterations`` down so the pretraining and
stage 2 fit their shares of ``--minutes`` (the values used are in every CSV row); past the deadline
no new run starts. Writes ``--csv`` (results/generative_fmnist_gpu.csv) and prints the per-row
accuracies and the paired global_local - dim difference (bench/generative_compare.py's interval).

    PYTHONPATH=. python bench/gpu_generative.py --data-root data/fashion-mnist   # on the GPU box
    PYTHONPATH=. python bench/gpu_generative.py --tiny                          # CPU smoke test

Carrying Fashion-MNIST to a lent device: ``mkdir -p data/fashion-mnist && cp
/usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/`` (``data/`` is git-ignored: name it in
the device run's carry, 30 MB), and write the CSV where the device hands files back:
``... --data-root data/fashion-mnist --csv $OUT/generative_fmnist_gpu.csv``, then copy it to
``results/``.

``--tiny``: digits, GAN width 8, a few steps, one-epoch evaluations, into a temporary directory:
proves the script end to end on a CPU in a few minutes. Needs torch, accelerate, numpy, PyYAML,
tqdm and Pillow (grids also matplotlib and torchvision; without them they are skipped); a missing
one is named in one line, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "accelerate", "numpy", "yaml", "tqdm", "PIL")
TINY = {"dataset": "digits", "gan_steps": 4, "gan_width": 8, "gan_batch": 32, "iterations": 2, "pool_warmup": 1,
        "pool_every": 1, "match_batch": 20, "eval_epochs": 1}
PRETRAIN_SHARE, STAGE2_SHARE = 0.3, 0.35
"""Shares of --minutes for the pretraining and for the stage-2 runs (the rest: evaluations)."""


def missing_modules() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def load_sweep(path: Path, tiny: bool, overrides: dict[str, Any]):
    """The grid, with ``--tiny``'s toy budget and the fitted step counts written over the keys it
    sets (in ``base`` or in the grid blocks that have them; one model per cell with ``--tiny``)."""
    from hpcdd.sweep.grid import expand_grid
    from hpcdd.yamlfile import load_yaml_file

    data = load_yaml_file(path, "grid file")
    changes = {**(TINY if tiny else {}), **overrides}
    base = {k: changes.get(k, v) for k, v in (data.get("base") or {}).items()}
    blocks = data.get("grid") or []
    blocks = [blocks] if isinstance(blocks, dict) else blocks
    blocks = [{k: [changes[k]] if k in changes else v for k, v in b.items()} for b in blocks]
    if tiny:
        blocks = [{k: [1] if k == "eval_n" else v for k, v in b.items()} for b in blocks]
        base["eval_n"] = 1
    return expand_grid({**data, "base": base, "grid": blocks}, source=str(path))


def seconds_per_gan_step(ref: Any, exe: Any, steps: int = 6) -> float:
    """Wall seconds of one pretraining step of this GAN config on this device (after 2 warm-up)."""
    import torch

    from hpcdd.generative.pretrain import GanPretrain
    from hpcdd.runtime.accel import make_accelerator

    job = GanPretrain(ref.config, make_accelerator(exe.deterministic), exe)
    for it in range(2):
        job.step(it)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for it in range(2, 2 + steps):
        job.step(it)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def fit(sweep: Any, exe: Any, minutes: float, workers: int) -> dict[str, Any]:
    """gan_steps and iterations that fit the time shares, from a measured GAN step."""
    [prereq] = sweep.prereqs
    sec = seconds_per_gan_step(prereq.ref, exe)
    steps = prereq.ref.config.steps or prereq.ref.config.epochs * 468
    gan_steps = max(1, min(steps, int(PRETRAIN_SHARE * 60 * minutes / sec)))
    matching = [r for r in sweep.runs if r.config.iterations]
    iterations = max(r.config.iterations for r in matching) if matching else 0
    if matching:  # a stage-2 step: the GAN step plus the pool's training, ~3 GAN steps; runs share the GPU
        rounds = -(-len(matching) // workers)
        iterations = max(1, min(iterations, int(STAGE2_SHARE * 60 * minutes / (rounds * 3 * sec * workers ** 0.5))))
    print(f"fit: {sec * 1000:.1f} ms per GAN step -> gan_steps {gan_steps}, iterations {iterations}", flush=True)
    return {"gan_steps": gan_steps, "iterations": iterations}


def run_task(config: Any, run_dir: str, exe: Any, evals: tuple) -> list[dict[str, Any]]:
    """One distillation and its evaluations (in a worker process)."""
    from hpcdd.run import run_one

    return run_one(config, Path(run_dir), exe, evals=evals)


def run_all(sweep: Any, exe: Any, out: Path, workers: int, deadline: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run of the sweep, the matching ones first; no new run starts after ``deadline``."""
    order = sorted(sweep.runs, key=lambda r: -(r.config.iterations or 0))
    rows, skipped = [], []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending, running = list(order), {}
        while pending or running:
            while pending and len(running) < workers and time.monotonic() < deadline:
                r = pending.pop(0)
                running[pool.submit(run_task, r.config, str(out / r.run_id), exe, r.evals)] = r
            if not running:
                skipped += [r.run_id for r in pending]
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                r = running.pop(f)
                try:
                    rows += f.result()
                except Exception as e:  # noqa: BLE001 - report it, go on with the others
                    print(f"run {r.run_id} ({r.config.method}) failed: {e}", flush=True)
                    skipped.append(r.run_id)
            print(f"{len(rows)} rows, {len(running)} running, {len(pending)} waiting "
                  f"({(time.monotonic() - START) / 60:.1f} min)", flush=True)
    return rows, skipped


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("+".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in r.items()})
    print(f"wrote {path} ({len(rows)} rows)", flush=True)


def summary(rows: list[dict[str, Any]]) -> str:
    """Mean ConvNet3 accuracy per (method, ipc, kind) and the paired global_local - dim difference."""
    from generative_compare import interval

    cells: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("acc_mean__convnet3") is not None:
            cells.setdefault((r["method"], r["ipc"], r["eval_kind"], r["protocol"]), []).append(r["acc_mean__convnet3"])
    lines = [f"{m:13s} ipc {i:3d} {k:8s} {p:18s} {100 * sum(v) / len(v):6.2f} % over {len(v)} run(s)"
             for (m, i, k, p), v in sorted(cells.items())]
    by_seed = {(r["method"], r["seed"]): r["acc_mean__convnet3"] for r in rows
               if r.get("ipc") == 10 and r.get("eval_kind") == "fixed" and r.get("acc_mean__convnet3") is not None
               and r.get("eval_models") in (["convnet3"], ("convnet3",), "convnet3")}
    diffs = [by_seed[("global_local", s)] - by_seed[("dim", s)] for (m, s) in by_seed
             if m == "dim" and ("global_local", s) in by_seed]
    if len(diffs) >= 2:
        mean, low, high = interval(diffs)
        verdict = "resolved" if low > 0 or high < 0 else "not resolved"
        lines.append(f"global_local - dim, ipc 10 fixed, ConvNet3: {100 * mean:+.2f} points, 95 % t-interval "
                     f"[{100 * low:+.2f}, {100 * high:+.2f}] over {len(diffs)} seeds: {verdict}")
    return "\n".join(lines)


START = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=Path, default=REPO / "launch" / "generative_fmnist_gpu.yaml")
    ap.add_argument("--data-root", default=None, help="Fashion-MNIST idx files (default: the standard location)")
    ap.add_argument("--out", type=Path, default=None, help="runs and artefacts (default: a temporary directory)")
    ap.add_argument("--csv", type=Path, default=REPO / "results" / "generative_fmnist_gpu.csv")
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--no-fit", dest="fit", action="store_false", help="the grid's budgets as written")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: digits, toy budgets")
    args = ap.parse_args(argv)
    missing = missing_modules()
    if missing:
        print(f"gpu_generative: missing Python modules {', '.join(missing)}; pip install them (or carry their wheels)",
              file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from hpcdd.config import ExecConfig
    from hpcdd.prereq import build

    out = args.out or Path(tempfile.mkdtemp(prefix="hpcdd-gpu-"))
    threads = max(1, (os.cpu_count() or 2) // args.workers)
    exe = ExecConfig(progress=False, artefact_root=str(out / "artefacts"), data_root=args.data_root, threads=threads,
                     checkpoint_every=10_000)
    csv_path = out / "generative_tiny.csv" if args.tiny else args.csv
    sweep = load_sweep(args.grid, args.tiny, {})
    if args.fit and not args.tiny:
        sweep = load_sweep(args.grid, False, fit(sweep, exe, args.minutes, args.workers))
    deadline = START + 60 * args.minutes
    print(f"{len(sweep.runs)} runs, {len(sweep.cells)} evaluations, {len(sweep.prereqs)} pretraining(s); out {out}",
          flush=True)
    for p in sweep.prereqs:
        t0 = time.monotonic()
        build(p.ref, exe)
        print(f"pretraining {p.key}: {time.monotonic() - t0:.0f} s", flush=True)
    rows, skipped = run_all(sweep, exe, out / "runs", args.workers, deadline)
    if rows:
        write_csv(rows, csv_path)
    print(summary(rows))
    if skipped:
        print(f"not run or failed (deadline or error): {len(skipped)} run(s)", flush=True)
    print(f"total {(time.monotonic() - START) / 60:.1f} min", flush=True)
    return 0 if rows and not skipped else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # generative_compare
    raise SystemExit(main())
