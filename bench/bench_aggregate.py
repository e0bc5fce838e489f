"""Benchmark ``hpcdd.report.aggregate`` on N synthetic run dirs (default 10,000).

    .venv/bin/python bench/bench_aggregate.py [--n 10000] [--repeat 1] [-o results/bench_aggregate.csv]

Each synthetic run dir has the real layout (config.yaml, checkpoint/, metrics.jsonl,
result.json, done). Only the ``aggregate`` call is timed; the files were just written, so they
are in the page cache (a warm-cache figure; a cold NFS/Lustre read will be slower). The synthetic
inputs live in a temp dir and are written plainly; the results CSV goes through the atomic
helpers. Output columns: n_runs, seconds, then provenance (git commit, hostname, cpu count,
python and pandas versions, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from hpcdd.io import atomic_write_text  # noqa: E402
from hpcdd.report.aggregate import aggregate  # noqa: E402

METHODS = ("dm", "dc", "dsa", "random", "herding", "kcenter", "idc", "mtt")
DATASETS = ("fashionmnist", "mnist", "cifar10")
IPCS = (1, 10, 50)
ARCHS = ("convnet3", "resnet18")


def synthetic_result(i: int) -> dict:
    """A result.json-shaped dict for run number ``i`` (every field present, lists included)."""
    method, dataset = METHODS[i % len(METHODS)], DATASETS[(i // 8) % len(DATASETS)]
    ipc, seed = IPCS[(i // 24) % len(IPCS)], i // 72
    res = {
        "run_id": hashlib.sha256(str(i).encode()).hexdigest()[:12], "protocol": "dc1000",
        "method": method, "dataset": dataset, "ipc": ipc, "seed": seed, "iterations": 20000,
        "im_size": None, "net": "convnet3", "sampler": "random", "init": "real",
        "batch_real": 256, "lr_img": 1.0, "momentum_img": 0.5, "dsa": True,
        "dsa_strategy": "color_crop_cutout_scale_rotate", "precision": "fp32",
        "eval_models": list(ARCHS), "eval_epochs": 1000, "eval_n": 5, "eval_lr": 0.01,
        "eval_batch": 256, "eval_dsa": True,
    }
    for k, arch in enumerate(ARCHS):
        accs = [round(0.5 + ((i * 7 + j + k) % 40) / 100, 4) for j in range(5)]
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
        res.update({f"acc_mean__{arch}": mean, f"acc_std__{arch}": std, f"accs__{arch}": accs})
        if k == 0:
            res.update(acc_mean=mean, acc_std=std, accs=accs)
    res.update(
        distill_seconds=123.4, eval_seconds=56.7, peak_rss_mb=2048.0, iterations_done=20000,
        hpcdd_version="0.1.0", git_commit="0" * 40, torch_version="2.5.1", hostname="node01",
        device="cuda", finished_at="2025-01-01T00:00:00+00:00",
    )
    return res


def make_runs(root: Path, n: int) -> None:
    """Write ``n`` complete synthetic run dirs below ``root``."""
    for i in range(n):
        res = synthetic_result(i)
        d = root / res["run_id"]
        (d / "checkpoint").mkdir(parents=True)
        (d / "checkpoint" / "state.pt").write_bytes(b"\0" * 64)
        cfg = {k: res[k] for k in ("method", "dataset", "ipc", "seed")}
        (d / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
        rows = [json.dumps({"it": it, "loss": 1.0 / (it + 1)}) for it in range(0, 100, 10)]
        (d / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        (d / "result.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
        (d / "done").write_text("")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="synthetic runs (default 10000)")
    p.add_argument("--repeat", type=int, default=1, help="timed aggregate calls (default 1)")
    p.add_argument("-o", "--output", default=str(REPO / "results" / "bench_aggregate.csv"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hpcdd_bench_") as tmp:
        runs = Path(tmp) / "runs"
        t0 = time.perf_counter()
        make_runs(runs, args.n)
        print(f"generated {args.n} run dirs in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        rows = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            df, _report = aggregate([runs])
            seconds = time.perf_counter() - t0
            assert len(df) == args.n, (len(df), args.n)
            rows.append({
                "n_runs": args.n, "seconds": round(seconds, 3), "git_commit": git_commit(),
                "hostname": socket.gethostname(), "cpu_count": cpu_count(),
                "python": platform.python_version(), "pandas": pd.__version__,
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            })
            print(f"aggregate: {args.n} runs in {seconds:.2f}s", file=sys.stderr)
    atomic_write_text(args.output, pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
