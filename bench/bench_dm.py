"""Seconds per DM iteration on real Fashion-MNIST (ipc 10, batch_real 256, ConvNet3, DSA).

Variants:
  per-class     the official code's structure: one forward of 256 real images per class
  batched-fp32  hpcdd: all classes in one no-grad pass over chunks of --chunk images
  batched-bf16  the same with bf16 autocast for the real-image pass (precision: bf16)

hpcdd tunes glibc malloc (hpcdd/runtime/malloc.py) in run_one; --plain-malloc measures without it.
Writes results/bench_dm.csv with provenance (commit, host, threads, torch version, date).
Usage: python bench/bench_dm.py [--iters 10] [--warmup 2] [--chunks 64,128,256]
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import datetime, timezone

import torch

from csvrows import append_rows
from hpcdd.catalog import resolve
from hpcdd.config import RunConfig
from hpcdd.data import load_dataset
from hpcdd.runtime.accel import make_accelerator
from hpcdd.runtime.malloc import tune_malloc
from hpcdd.runtime.provenance import git_commit
from hpcdd.specs import METHODS, SAMPLERS, load_impl


def time_variant(data, dataset: str, precision: str, per_class: bool, chunk: int, iters: int, warmup: int) -> float:
    cfg = resolve(RunConfig(dataset=dataset, ipc=10, batch_real=256, precision=precision))
    sampler = load_impl(SAMPLERS.get("random").impl)(data.train, cfg.seed)
    d = load_impl(METHODS.get("dm").impl)(cfg, data.train, make_accelerator(), sampler)
    if per_class:
        d.loss = d.loss_per_class  # the official per-class forward structure
    d.real_chunk = chunk
    for it in range(warmup):
        d.step(it)
    t0 = time.perf_counter()
    for it in range(warmup, warmup + iters):
        d.step(it)
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--chunks", default="64,128,256")
    ap.add_argument("--out", default="results/bench_dm.csv")
    ap.add_argument("--plain-malloc", action="store_true", help="do not tune glibc malloc")
    ap.add_argument("--variants", default="all", help="'all' or 'per-class' (the official structure only)")
    ap.add_argument("--dataset", default="fashionmnist", help="the committed rows: fashionmnist")
    ap.add_argument("--data-root", default=None, help="dataset directory (default: its standard location)")
    args = ap.parse_args()
    malloc = "plain" if args.plain_malloc else ("tuned" if tune_malloc() else "plain")
    data = load_dataset(args.dataset, root=args.data_root)
    variants = [("per-class", "fp32", True, 256)]
    if args.variants == "all":
        for chunk in map(int, args.chunks.split(",")):
            variants += [(f"batched-fp32-chunk{chunk}", "fp32", False, chunk)]
        variants += [("batched-bf16-chunk128", "bf16", False, 128)]
    meta = {
        "commit": git_commit()[:12], "host": platform.node(), "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "date": datetime.now(timezone.utc).date().isoformat(),
    }
    rows = []
    for name, precision, per_class, chunk in variants:
        sec = time_variant(data, args.dataset, precision, per_class, chunk, args.iters, args.warmup)
        rows.append({"variant": name, "malloc": malloc, "sec_per_iter": round(sec, 3), "iters": args.iters, **meta})
        print(f"{name:28s} malloc={malloc:5s} {sec:.3f} s/iter", flush=True)
    append_rows(args.out, rows)


if __name__ == "__main__":
    main()
