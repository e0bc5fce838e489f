"""DM iterations per second with 1 and 2 processes (issue 21), and where one GPU's DM step goes.

Layouts (``--layouts``, PROCSxTHREADS): each runs DM on Fashion-MNIST ipc 10 (batch_real 256,
ConvNet3, DSA) with PROCS real processes (gloo on CPU, the environment torchrun gives), each with
THREADS torch threads and its share of the classes (hpcdd.distill.base: the image gradients are
summed over the processes). ``1x2`` is one process using both cores: the baseline a second
process must beat. Timed: ``--iters`` steps after ``--warmup``, on rank 0, after a collective that
lines the ranks up.

``--split`` (for a lent GPU): one process on the default device, each step timed in two parts,
``sampling+augmentation`` (the sampler's indices, loading the real images to the device, the DSA
draws and their application: ``ImageDistiller.batches``) and ``matching`` (the embeddings, loss,
backward and the image step), with a device synchronisation between them.

Writes results/bench_scaling.csv (commit, host, device, torch, date, and the 1-minute load
average before each layout: on a shared machine other work skews every number).
Usage: python bench/bench_scaling.py [--layouts 1x1,2x1,1x2] [--iters 5] [--warmup 1]
       python bench/bench_scaling.py --split [--iters 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.multiprocessing as mp

from csvrows import append_rows


def _build(dataset: str, ipc: int, threads: int | None, root: str | None):
    from hpcdd.catalog import resolve
    from hpcdd.config import RunConfig
    from hpcdd.data import load_dataset
    from hpcdd.runtime.accel import make_accelerator
    from hpcdd.runtime.process import setup_process
    from hpcdd.select.samplers import build_sampler
    from hpcdd.specs import METHODS, load_impl

    n = setup_process(threads)
    accelerator = make_accelerator(True, 600.0, n)
    data = load_dataset(dataset, root=root)
    cfg = resolve(RunConfig(dataset=dataset, ipc=ipc, batch_real=256))
    return load_impl(METHODS.get("dm").impl)(cfg, data.train, accelerator, build_sampler(cfg, data.train))


def _rank(rank: int, procs: int, port: int, args: dict, out: str) -> None:
    if procs > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(procs), LOCAL_RANK=str(rank),
                          LOCAL_WORLD_SIZE=str(procs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    d = _build(args["dataset"], args["ipc"], args["threads"], args["data_root"])
    for it in range(args["warmup"]):
        d.step(it)
    d.dist.any(False)  # line the ranks up
    t0 = time.perf_counter()
    for it in range(args["warmup"], args["warmup"] + args["iters"]):
        d.step(it)
    d.dist.any(False)
    if d.dist.is_main:
        Path(out).write_text(json.dumps({"seconds": time.perf_counter() - t0}))


def scaling(procs: int, threads: int, args: argparse.Namespace) -> float:
    """Seconds per DM iteration with ``procs`` processes of ``threads`` threads."""
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        kw = {"dataset": args.dataset, "ipc": args.ipc, "threads": threads, "data_root": args.data_root,
              "warmup": args.warmup, "iters": args.iters}
        ps = [ctx.Process(target=_rank, args=(r, procs, port, kw, out)) for r in range(procs)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        if any(p.exitcode for p in ps):
            raise SystemExit(f"a rank failed: exit codes {[p.exitcode for p in ps]}")
        return json.loads(Path(out).read_text())["seconds"] / args.iters


def split(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per DM step in sampling+augmentation and in matching, one process."""
    from hpcdd.seeding import fresh_net, generator

    d = _build(args.dataset, args.ipc, None, args.data_root)
    sync = torch.cuda.synchronize if d.device.type == "cuda" else (lambda: None)
    parts = {"sampling_aug": 0.0, "matching": 0.0}
    for it in range(args.warmup + args.iters):
        sync()
        t0 = time.perf_counter()
        net = fresh_net(d.cfg.net, d.data.info, d.cfg.seed, f"dm-net-{it}", d.device)
        for p in net.parameters():
            p.requires_grad_(False)
        real, syn = d.batches(net, generator(d.cfg.seed, f"dm-dsa-{it}"))
        sync()
        t1 = time.perf_counter()
        loss = d.loss(net, real, syn)
        d.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        d.optimizer.step()
        sync()
        if it >= args.warmup:
            parts["sampling_aug"] += t1 - t0
            parts["matching"] += time.perf_counter() - t1
    return {k: v / args.iters for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="1x1,2x1,1x2", help="PROCSxTHREADS, comma-separated")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--split", action="store_true", help="one process: sampling+augmentation vs matching")
    ap.add_argument("--out", default="results/bench_scaling.csv")
    args = ap.parse_args()
    from hpcdd.runtime.provenance import git_commit

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    meta = {"dataset": args.dataset, "ipc": args.ipc, "iters": args.iters, "commit": git_commit()[:12],
            "host": platform.node(), "device": device, "torch": torch.__version__,
            "date": datetime.now(timezone.utc).date().isoformat()}
    rows = []
    if args.split:
        parts = split(args)
        total = sum(parts.values())
        rows.append({"layout": "split", "procs": 1, "threads": torch.get_num_threads(),
                     "load_before": round(os.getloadavg()[0], 2),
                     "sec_per_iter": round(total, 4), "it_per_s": round(1 / total, 3),
                     "sec_sampling_aug": round(parts["sampling_aug"], 4), "sec_matching": round(parts["matching"], 4),
                     **meta})
    else:
        for layout in args.layouts.split(","):
            procs, threads = map(int, layout.split("x"))
            load = os.getloadavg()[0]
            sec = scaling(procs, threads, args)
            rows.append({"layout": layout, "procs": procs, "threads": threads, "load_before": round(load, 2),
                         "sec_per_iter": round(sec, 4),
                         "it_per_s": round(1 / sec, 3), "sec_sampling_aug": "", "sec_matching": "", **meta})
    for row in rows:
        print(f"{row['layout']:6s} {row['sec_per_iter']:.3f} s/iter  {row['it_per_s']:.3f} it/s "
              f"{row['sec_sampling_aug']} {row['sec_matching']}", flush=True)
    append_rows(args.out, rows)


if __name__ == "__main__":
    main()
