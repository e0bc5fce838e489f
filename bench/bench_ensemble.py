"""Seconds per model-epoch of the evaluation protocol: N fresh models trained one by one vs as one
batched ensemble, on Fashion-MNIST ipc 10 (10 seeded real images per class stand in for a
synthetic set: 100 images, one batch of the protocol's 256 per epoch), DSA on.

Variants (the same init, data order, augmentation draws and images per model):
  one-by-one   hpcdd.evaluate.train_from_scratch per model (eval_ensemble: off)
  ensemble     hpcdd.ensemble: the N nets as one module of grouped convolutions (eval_ensemble: on)
  vmap         torch.func.stack_module_state + functional_call + vmap(grad) over the N models,
               one SGD over the stacked parameters (the alternative, timed here only)

Each (arch, threads, variant) runs in its own process (its own peak memory: max RSS on CPU, the
CUDA allocator's peak on a GPU; a process killed for memory leaves a row with its error) and
trains N models for --warmup then --epochs epochs; the timed part gives wall and CPU (user +
system) seconds per model-epoch. The machine is shared: the load average before and after each
timing is recorded, and the CPU columns are the steadier ones. Rows are appended as they come.

--equivalence E instead trains the N models one by one and as an ensemble for E epochs each and
tests them on the real test set: per-model accuracies and the largest difference, in points
(results/ensemble_equivalence.csv).

Usage: python bench/bench_ensemble.py [--archs convnet3,convnet3_bn] [--threads 1,2] [--n 5]
       [--epochs 3] [--warmup 1] [--variants one-by-one,ensemble,vmap] [--device cpu]
Writes (appends to) results/bench_ensemble.csv with provenance (commit, host, date, torch, load).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from csvrows import append_rows
from hpcdd.augment import DSA, default_strategy
from hpcdd.config import EvalConfig
from hpcdd.data import load_dataset
from hpcdd.ensemble import augment_many, group_nets
from hpcdd.evaluate import train_from_scratch, train_grouped, train_models
from hpcdd.runtime.accel import make_accelerator, peak_memory_mb
from hpcdd.runtime.malloc import tune_malloc
from hpcdd.runtime.provenance import git_commit
from hpcdd.seeding import fresh_net, generator
from hpcdd.artefact import ImageSource, SyntheticSet

IPC = 10


def real_set(data, ipc: int) -> SyntheticSet:
    g = generator(0, "bench-ensemble-pick")
    idx = torch.cat([c[torch.randperm(len(c), generator=g)[:ipc]] for c in data.train.class_indices])
    return SyntheticSet(data.train.images(idx), data.train.labels[idx])


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def vmap_trainer(nets, syn: SyntheticSet, gens, *, dsa: DSA, device: torch.device):
    """``train(epochs)``: the protocol's training of ``nets`` through torch.func (timing only)."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    step = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0))
    images, labels = syn.images.to(device), syn.labels.to(device)

    def train(epochs: int) -> None:
        for _ in range(epochs):
            orders = [torch.randperm(len(images), generator=g).to(device) for g in gens]
            for start in range(0, len(images), 256):
                idx = [o[start:start + 256] for o in orders]
                xs = augment_many(dsa, [images[i] for i in idx], gens)
                grads = step(params, buffers, torch.stack(xs), torch.stack([labels[i] for i in idx]))
                for k, p in params.items():
                    p.grad = grads[k]
                opt.step()

    return train


def time_variant(variant: str, arch: str, n: int, syn: SyntheticSet, info, args, device) -> dict:
    dsa = DSA(default_strategy(args.dataset))
    nets = [fresh_net(arch, info, 0, f"bench-{arch}-{k}-init", device) for k in range(n)]
    gens = [generator(0, f"bench-{arch}-{k}-train") for k in range(n)]
    kw = dict(lr=0.01, batch=256, dsa=dsa, device=device)

    def run(epochs: int) -> None:
        if variant == "one-by-one":
            for net, g in zip(nets, gens):
                train_from_scratch(net, lambda e: syn, epochs=epochs, gen=g, **kw)
        elif variant == "ensemble":
            train_grouped(grouped, [lambda e: syn] * n, gens, epochs=epochs, **kw)
        else:
            vmapped(epochs)

    grouped = group_nets(nets, (info.channels, info.im_size, info.im_size)) if variant == "ensemble" else None
    vmapped = vmap_trainer(nets, syn, gens, dsa=dsa, device=device) if variant == "vmap" else None
    if args.warmup:
        run(args.warmup)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    load0, c0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    run(args.epochs)
    sync()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    per = n * args.epochs
    return {"wall_s_per_model_epoch": round(wall / per, 4), "cpu_s_per_model_epoch": round(cpu / per, 4),
            "load1_before": round(load0, 2), "load1_after": round(os.getloadavg()[0], 2)}


def equivalence(data, syn: SyntheticSet, args, device, meta: dict) -> None:
    """Per architecture: the N models one by one and as one ensemble, E epochs, real test set."""
    for arch in args.archs.split(","):
        ev = EvalConfig(models=(arch,), n=args.n, epochs=args.equivalence)
        models = [(arch, k) for k in range(args.n)]
        accs = {mode: train_models(ImageSource(syn), data.test, data.info, ev, models, seed=0, dataset=args.dataset,
                                   ipc=None, device=device, ensemble=mode, progress=False)
                for mode in ("off", "on")}
        off, on = [accs["off"][m] * 100 for m in models], [accs["on"][m] * 100 for m in models]
        diff = max(abs(a - b) for a, b in zip(off, on))
        row = {"arch": arch, "n": args.n, "epochs": args.equivalence, "threads": torch.get_num_threads(),
               "accs_off": " ".join(f"{a:.2f}" for a in off), "accs_on": " ".join(f"{a:.2f}" for a in on),
               "max_diff_points": round(diff, 3), "identical": off == on, **meta}
        append_rows(args.equivalence_out, [row])
        print(f"{arch}: one by one {row['accs_off']} | ensemble {row['accs_on']} | max diff {diff:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="convnet3,convnet3_bn")
    ap.add_argument("--threads", default="1,2", help="torch CPU threads, comma-separated (--equivalence: the first)")
    ap.add_argument("--n", type=int, default=5, help="models per architecture (the ensemble size)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    ap.add_argument("--variants", default="one-by-one,ensemble,vmap")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="fashionmnist", help="the committed rows: fashionmnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="results/bench_ensemble.csv")
    ap.add_argument("--equivalence", type=int, default=0, metavar="E",
                    help="instead: accuracies after E epochs, one by one vs ensemble")
    ap.add_argument("--equivalence-out", default="results/ensemble_equivalence.csv")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # ARCH,VARIANT,THREADS: one timing
    args = ap.parse_args(argv)
    tune_malloc()
    make_accelerator(deterministic=True)
    device = torch.device(args.device)
    data = load_dataset(args.dataset, root=args.data_root)
    syn = real_set(data, IPC)
    meta = {"dataset": args.dataset, "ipc": IPC, "device": torch.cuda.get_device_name(device)
            if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)", "commit": git_commit()[:12],
            "host": platform.node(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).date().isoformat(),
            "command": shlex.join(["python", "bench/bench_ensemble.py", *(sys.argv[1:] if argv is None else argv)])}
    if args.equivalence:
        torch.set_num_threads(int(args.threads.split(",")[0]))
        equivalence(data, syn, args, device, meta)
        return 0
    if args.worker:
        arch, variant, threads = args.worker.split(",")
        torch.set_num_threads(int(threads))
        res = time_variant(variant, arch, args.n, syn, data.info, args, device)
        print(json.dumps({**res, "peak_mem_mb": round(peak_memory_mb(device), 1)}))
        return 0
    for threads in map(int, args.threads.split(",")):
        for arch in args.archs.split(","):
            for variant in args.variants.split(","):
                res = run_worker(f"{arch},{variant},{threads}", sys.argv[1:] if argv is None else argv)
                append_rows(args.out, [{"arch": arch, "variant": variant, "n": args.n, "threads": threads,
                                        "epochs": args.epochs, **res, **meta}])
                print(f"{arch:12s} {variant:10s} threads={threads} " + (res["error"] or (
                      f"wall {res['wall_s_per_model_epoch']:.3f} cpu {res['cpu_s_per_model_epoch']:.3f} "
                      f"s/model-epoch, peak {res['peak_mem_mb']:.0f} MB (load {res['load1_before']}"
                      f"->{res['load1_after']})")), flush=True)
    return 0


def run_worker(spec: str, argv: list[str]) -> dict:
    """One timing in its own process (its own peak memory; an out-of-memory kill costs one row)."""
    proc = subprocess.run([sys.executable, __file__, *argv, "--worker", spec], capture_output=True, text=True)
    keys = ("wall_s_per_model_epoch", "cpu_s_per_model_epoch", "load1_before", "load1_after", "peak_mem_mb")
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {**dict.fromkeys(keys), "error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "error": ""}


if __name__ == "__main__":
    raise SystemExit(main())
