"""DREAM-DM vs random-DM per iteration, side by side (issue 19's acceptance: DREAM costs <= 1.3x).

Builds the distillers as ``run.py`` does (resolve, ``build_sampler``, the DM class) on
Fashion-MNIST ipc 10, and steps them INTERLEAVED (random iteration i, then each DREAM setting's
iteration i, then i+1 ...) in one process with one torch thread, so that a change of load on a
shared machine hits every variant alike. Each variant first runs ``--warmup`` untimed steps (the
first clustering and the allocator's warm-up), then ``--iters`` timed ones (a multiple of the
interval: the timed window holds exactly ``iters / interval`` clusterings per class).

Per variant and timed iteration, in seconds: wall, process CPU, and for DREAM its embedding and
k-means (with the nearest-sample search) from the sampler's own clocks; matching is the rest.
Ratios are against the random baseline of the same run, in wall and in CPU time.

    python bench/bench_dream.py                               # default DREAM vs random
    python bench/bench_dream.py --dream "" "candidates=500" "kmeans_init=k-means++" --iters 20
    python bench/bench_dream.py --precision bf16 --append

Each ``--dream`` value is one DREAM setting as comma-separated ``key=value`` sampler parameters
(empty: the defaults). Appends to (or writes) ``results/bench_dream.csv`` with the commit, host,
threads and the 1-minute load average at the start and end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

import pandas as pd

from hpcdd.catalog import configs_from_flat, resolve
from hpcdd.data import load_dataset
from hpcdd.io import atomic_write_text
from hpcdd.runtime.accel import make_accelerator
from hpcdd.runtime.process import setup_process
from hpcdd.runtime.provenance import git_commit, git_dirty
from hpcdd.select.samplers import build_sampler
from hpcdd.specs import METHODS, load_impl


def parse_setting(text: str) -> dict:
    """``"candidates=500,kmeans_init=k-means++"`` -> sampler parameters (YAML scalars)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--dream: expected key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


class Variant:
    """One distiller and its sampler, with per-part clocks over the timed steps."""

    def __init__(self, name: str, flat: dict, data, accelerator) -> None:
        cfg, _ = configs_from_flat(flat, where=name)
        self.cfg = resolve(cfg)
        self.name = name
        t0 = time.perf_counter()
        self.sampler = build_sampler(self.cfg, data.train)
        self.distiller = load_impl(METHODS.get(self.cfg.method).impl)(self.cfg, data.train, accelerator, self.sampler)
        self.build_s = time.perf_counter() - t0
        self.wall = self.cpu = 0.0
        self.steps = 0

    def sampler_seconds(self) -> tuple[float, float]:
        stats = getattr(self.sampler, "stats", {})
        return float(stats.get("embed_seconds", 0.0)), float(stats.get("kmeans_seconds", 0.0))

    def step(self, it: int, timed: bool) -> None:
        if timed and self.steps == 0:
            self.start_parts = self.sampler_seconds()
            self.start_clusterings = getattr(self.sampler, "stats", {}).get("reclusterings", 0)
        t0, c0 = time.perf_counter(), time.process_time()
        self.distiller.step(it)
        if timed:
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - c0
            self.steps += 1

    def row(self) -> dict:
        embed, km = (b - a for a, b in zip(self.start_parts, self.sampler_seconds()))
        n = self.steps
        info = self.sampler.info()
        return {
            "variant": self.name, "sampler": self.cfg.sampler, "precision": self.cfg.precision,
            "settings": ";".join(f"{k}={v}" for k, v in self.cfg.sampler_params.items()),
            "iters_timed": n, "sec_per_iter": round(self.wall / n, 3), "cpu_per_iter": round(self.cpu / n, 3),
            "embed_s_per_iter": round(embed / n, 3), "kmeans_s_per_iter": round(km / n, 3),
            "match_s_per_iter": round((self.wall - embed - km) / n, 3),
            "clusterings_timed": info.get("reclusterings", 0) - self.start_clusterings,
            "candidates_per_class": info.get("candidates_per_class", ""),
            "kmeans_backend": info.get("kmeans_backend", ""), "build_s": round(self.build_s, 2),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--dream", nargs="*", default=[""], metavar="SETTING",
                    help="DREAM settings, each 'key=value,...' sampler parameters ('' = the defaults)")
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per variant (a multiple of the interval)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per variant first")
    ap.add_argument("--method", default="dm", help="dm (the acceptance), or dc/dsa to pilot their cost")
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/bench_dream.csv")
    ap.add_argument("--append", action="store_true", help="append to --out (default: overwrite)")
    args = ap.parse_args(argv)
    setup_process(args.threads)
    data = load_dataset(args.dataset, root=args.data_root)
    accelerator = make_accelerator()
    base = {"method": args.method, "dataset": args.dataset, "ipc": args.ipc, "batch_real": args.batch_real,
            "precision": args.precision, "iterations": args.warmup + args.iters}
    variants = [Variant("random", {**base, "sampler": "random"}, data, accelerator)]
    for i, text in enumerate(args.dream):
        flat = {**base, "sampler": "dream", **parse_setting(text)}
        variants.append(Variant(f"dream{i}" + (f"[{text}]" if text else "[defaults]"), flat, data, accelerator))
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    for it in range(args.warmup + args.iters):
        for v in variants:
            v.step(it, timed=it >= args.warmup)
        print(f"iteration {it + 1}/{args.warmup + args.iters} done ({time.perf_counter() - t_start:.0f} s)",
              flush=True)
    meta = {
        "method": args.method, "dataset": args.dataset, "ipc": args.ipc, "batch_real": args.batch_real, "threads": torch.get_num_threads(),
        "load_1m_start": round(load_start, 2), "load_1m_end": round(os.getloadavg()[0], 2),
        "commit": git_commit()[:12], "dirty": git_dirty(), "host": platform.node(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["python", "bench/bench_dream.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    ref = variants[0].row()
    rows = []
    for v in variants:
        row = v.row()
        row["ratio_wall"] = round(row["sec_per_iter"] / ref["sec_per_iter"], 3)
        row["ratio_cpu"] = round(row["cpu_per_iter"] / ref["cpu_per_iter"], 3)
        rows.append({**row, **meta})
        print({k: row[k] for k in ("variant", "sec_per_iter", "cpu_per_iter", "embed_s_per_iter",
                                   "kmeans_s_per_iter", "match_s_per_iter", "ratio_wall", "ratio_cpu")}, flush=True)
    out = Path(args.out)
    table = pd.DataFrame(rows)
    if args.append and out.exists():
        table = pd.concat([pd.read_csv(out), table], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
