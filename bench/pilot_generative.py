"""Pilot of a generative sweep's cost, for sizing its grid: seconds per stage-2 step by pool model
(pool training vs the generator/critic step), and seconds per evaluation epoch by net, ipc and kind.

Stage 2 runs hpcdd's own ``GenerativeDistiller`` for ``--steps`` steps per pool model (``pool``
fixed to that one model) on a freshly initialised GAN of ``--width`` (the cost does not depend on
the weights). Evaluation trains one model per net for ``--epochs`` epochs on ``ipc`` generated
images per class (fixed: one draw; resample: a new draw every epoch), and times one test pass.
Reports wall and CPU seconds (CPU seconds are what a quiet core would take; the machine is
shared), the load average, and writes ``--out`` (results/pilot_generative.csv).

Usage: python bench/pilot_generative.py [--width 64] [--warmup-batches 16] [--steps 3]
       [--nets convnet3,alexnet,vgg11,resnet18] [--ipcs 10,50] [--epochs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from csvrows import append_rows
from hpcdd.augment import DSA, default_strategy
from hpcdd.catalog import configs_from_flat, resolve
from hpcdd.data import load_dataset
from hpcdd.evaluate import test_accuracy, train_from_scratch
from hpcdd.generative.gan import ARTEFACT, build_gan, generator_kwargs
from hpcdd.generative.matching import GenerativeDistiller
from hpcdd.io import atomic_torch_save
from hpcdd.runtime.accel import make_accelerator
from hpcdd.runtime.malloc import tune_malloc
from hpcdd.runtime.provenance import git_commit
from hpcdd.seeding import fresh_net, generator
from hpcdd.select.samplers import RandomSampler
from hpcdd.specs.generative import pool_models, pretrain_config


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> "Clock":
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def fake_pretraining(cfg, info, out: Path) -> None:
    """A gan.pt of the run's GAN config with untrained weights (timing only)."""
    gcfg = pretrain_config(cfg)
    G, D, opt_g, opt_d = build_gan(gcfg, info, torch.device("cpu"))
    atomic_torch_save(out / ARTEFACT, {"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(),
                                       "opt_d": opt_d.state_dict(), "gen": torch.Generator().get_state(),
                                       "kwargs": generator_kwargs(gcfg, info), "config": dataclasses.asdict(gcfg),
                                       "info": dataclasses.asdict(info)})


def stage2(args: argparse.Namespace, data: Any, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """Seconds per step with each pool model; also the (untrained) generator source for evaluation."""
    rows = []
    info = data.train.info
    with tempfile.TemporaryDirectory() as tmp:
        base = {"method": "global_local", "dataset": args.dataset, "gan_width": args.width,
                "pool_warmup": args.warmup_batches, "gan_precision": args.precision}
        run, _ = configs_from_flat(base, where="pilot")
        fake_pretraining(resolve(run), info, Path(tmp))
        for arch in pool_models(None, info.im_size) if args.pool == "dim" else args.pool.split(","):
            run, _ = configs_from_flat({**base, "pool": [arch], "pool_every": 1000}, where="pilot")
            d = GenerativeDistiller(resolve(run), data.train, make_accelerator(), RandomSampler(data.train, 0),
                                    {"gan": Path(tmp)})
            d.step(0)  # the pool model's creation and first allocations
            with Clock() as c:
                metrics = [d.step(it) for it in range(1, args.steps + 1)]
            pool = sum(m["pool_seconds"] for m in metrics) / args.steps
            gan = sum(m["gan_seconds"] for m in metrics) / args.steps
            rows.append({"kind": "stage2", "net": arch, "width": args.width, "precision": args.precision,
                         "pool_warmup": args.warmup_batches, "s_per_step": round(c.wall / args.steps, 3),
                         "cpu_s_per_step": round(c.cpu / args.steps, 3), "pool_s": round(pool, 3),
                         "gan_s": round(gan, 3), "load": round(os.getloadavg()[0], 2), **meta})
            print(f"stage 2, pool {arch:18s}: {rows[-1]['s_per_step']:.2f} s/step (CPU {rows[-1]['cpu_s_per_step']:.2f}): "
                  f"pool training {pool:.2f} s, generator+critic {gan:.2f} s", flush=True)
        return rows, d.source()


def evaluation(args: argparse.Namespace, data: Any, source: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Seconds per training epoch (DC protocol, DSA) by net, ipc and kind, and one test pass per net."""
    rows = []
    dsa = DSA(default_strategy(args.dataset))
    device = torch.device("cpu")
    for arch in args.nets.split(","):
        net = None
        for ipc in map(int, args.ipcs.split(",")):
            for kind in args.kinds.split(","):
                fixed = source.sample(ipc, generator(0, "pilot-fixed"))
                draw = (lambda e: fixed) if kind == "fixed" else (lambda e: source.sample(ipc, generator(0, f"e{e}")))
                net = fresh_net(arch, data.info, 0, "pilot-net", device)
                with Clock() as c:
                    train_from_scratch(net, draw, epochs=args.epochs, lr=0.01, batch=256, dsa=dsa,
                                       gen=generator(0, "pilot-train"), device=device)
                rows.append({"kind": f"train-{kind}", "net": arch, "ipc": ipc, "epochs": args.epochs,
                             "s_per_epoch": round(c.wall / args.epochs, 3),
                             "cpu_s_per_epoch": round(c.cpu / args.epochs, 3),
                             "load": round(os.getloadavg()[0], 2), **meta})
                print(f"train {kind:8s} {arch:10s} ipc {ipc:3d}: {rows[-1]['s_per_epoch']:.3f} s/epoch "
                      f"(CPU {rows[-1]['cpu_s_per_epoch']:.3f})", flush=True)
        with Clock() as c:
            test_accuracy(net, data.test, device)
        rows.append({"kind": "test-pass", "net": arch, "ipc": None, "epochs": None, "s_per_epoch": round(c.wall, 3),
                     "cpu_s_per_epoch": round(c.cpu, 3), "load": round(os.getloadavg()[0], 2), **meta})
        print(f"test pass {arch:10s} ({len(data.test)} images): {c.wall:.1f} s (CPU {c.cpu:.1f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--warmup-batches", type=int, default=16, help="pool_warmup")
    ap.add_argument("--pool", default="dim", help="'dim' (DiM's pool for the image size) or comma-separated nets")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--nets", default="convnet3,alexnet,vgg11,resnet18")
    ap.add_argument("--ipcs", default="10,50")
    ap.add_argument("--kinds", default="fixed,resample")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/pilot_generative.csv")
    args = ap.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    meta = {"dataset": args.dataset, "commit": git_commit()[:12], "host": platform.node(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    rows, source = stage2(args, data, meta)
    append_rows(args.out, rows)
    if args.nets:
        append_rows(Path(args.out).with_name(Path(args.out).stem + "_eval.csv"), evaluation(args, data, source, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
