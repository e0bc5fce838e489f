"""Seconds per DC / DSA outer iteration on real Fashion-MNIST (ipc 10, batch_real 256, ConvNet3).

One iteration at ipc 10 is outer_loop=10 matching steps (each followed by one image SGD step)
and 9 inner phases of inner_loop=50 epochs on the synthetic set. Since the official structure
takes minutes per iteration on a small CPU, each variant times ``--steps`` outer steps (matching
step + inner phase) and the iteration time is extrapolated as

    sec_per_outer_iter     = setup + 10 * sec_match_step_min + 9 * sec_inner_phase_min   (wall)
    cpu_sec_per_outer_iter = 10 * cpu_match_step + 9 * cpu_inner_phase                   (CPU)

(``extrapolated`` says so in the CSV). Wall times take the fastest timed step of each phase
and CPU times (user + system of the process) the mean: on a shared machine the wall clock
mostly measures the other jobs, so compare the CPU columns and the load columns too.
Variants, each in its own subprocess (malloc settings are per process):

  official      a re-creation of the official main.py loop structure: per class one forward and
                backward of the 256 real images with a graph (``autograd.grad`` + detach/clone)
                and one double backward of the class's synthetic images, the Python
                ``match_loss``/``distance_wb`` per class, ``loss.backward()`` into images and net,
                then per inner phase ``deepcopy`` + ``TensorDataset`` + ``DataLoader`` and the
                official ``epoch()`` (loss.item() and a numpy accuracy per batch). DSA uses
                hpcdd's ops with the official call pattern: one draw per class applied to the real
                and the synthetic batch, a per-sample draw per inner batch. Default glibc malloc.
  official-tuned  the same with hpcdd's malloc tuning (separates the allocator from the structure).
  hpcdd         hpcdd.distill.dc (what ``step`` runs): chunked no-graph real gradients, the
                synthetic gradients of all classes in one vmap pass, image-only backward, direct
                tensor indexing in the inner loop, tuned malloc (hpcdd.runtime.malloc).
  hpcdd-loop    the same with the per-class synthetic double-backward loop (batched=False).

Both structures use the same net, initial images, real batches and DSA draws, so their loss at
the first matching step must agree (``loss_first`` and ``loss_rel_diff`` in the CSV).

Usage: python bench/bench_dc.py [--steps 2] [--dsa both|on|off] [--variants official,hpcdd,hpcdd-loop]
Writes (appends to) results/bench_dc.csv with provenance (commit, host, date, torch, threads,
load average, command).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from csvrows import append_rows, git_head

ROOT = Path(__file__).resolve().parents[1]
IPC, BATCH_REAL, NET, DATASET = 10, 256, "convnet3", "fashionmnist"


def build(dsa: bool, seed: int = 0):
    """The resolved config, the dataset and a DC distiller (random sampler) as run.py builds them."""
    from hpcdd.catalog import configs_from_flat, resolve
    from hpcdd.data import load_dataset
    from hpcdd.runtime.accel import make_accelerator
    from hpcdd.specs import METHODS, SAMPLERS, load_impl

    run, _ = configs_from_flat({"method": "dsa" if dsa else "dc", "dataset": DATASET, "ipc": IPC,
                                "batch_real": BATCH_REAL, "net": NET, "seed": seed})
    cfg = resolve(run)
    data = load_dataset(cfg.dataset)
    sampler = load_impl(SAMPLERS.get("random").impl)(data.train, cfg.seed, None)
    d = load_impl(METHODS.get(cfg.method).impl)(cfg, data.train, make_accelerator(), sampler)
    return cfg, data, d


class Phases:
    """Wall and CPU (user+system, this process) seconds of each timed phase."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {"match": [], "inner": []}
        self.cpu: dict[str, list[float]] = {"match": [], "inner": []}

    def start(self) -> None:
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self, phase: str) -> None:
        self.wall[phase].append(time.perf_counter() - self._w)
        self.cpu[phase].append(time.process_time() - self._c)

    def result(self, setup: float, loss_first: float, outer_loop: int) -> dict:
        return {"setup": setup, "wall": self.wall, "cpu": self.cpu, "loss_first": loss_first,
                "outer_loop": outer_loop}


# -- (a) the official structure ---------------------------------------------------------------------

def official_distance_wb(gwr, gws):
    shape = gwr.shape
    if len(shape) == 4:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:
        return torch.tensor(0, dtype=torch.float, device=gwr.device)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def official_match_loss(gw_syn, gw_real):
    dis = torch.tensor(0.0)
    for ig in range(len(gw_real)):
        dis += official_distance_wb(gw_real[ig], gw_syn[ig])
    return dis


def official_epoch(dataloader, net, optimizer, criterion, dsa, gen):
    """utils.py ``epoch('train', ..., aug=dsa)``."""
    loss_avg, acc_avg, num_exp = 0.0, 0, 0
    net.train()
    for datum in dataloader:
        img = datum[0].float()
        if dsa is not None:
            img = dsa(img, gen, batchmode=False)
        lab = datum[1].long()
        n_b = lab.shape[0]
        output = net(img)
        loss = criterion(output, lab)
        acc = np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy()))
        loss_avg += loss.item() * n_b
        acc_avg += acc
        num_exp += n_b
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss_avg / num_exp, acc_avg / num_exp


def run_official(dsa_on: bool, steps: int) -> dict:
    from hpcdd.seeding import fresh_net, generator

    t_setup = time.perf_counter()
    cfg, data, d = build(dsa_on)
    image_syn, label_syn = d.images, d.labels
    optimizer_img = d.optimizer  # SGD([image_syn], lr=0.1, momentum=0.5)
    num_classes, channel, im = data.info.num_classes, data.info.channels, data.info.im_size
    criterion = nn.CrossEntropyLoss()
    gen_dsa, gen_train = generator(cfg.seed, "dc-dsa-0"), generator(cfg.seed, "dc-train-0")
    net = fresh_net(cfg.net, data.info, cfg.seed, "dc-net-0")
    net.train()
    net_parameters = list(net.parameters())
    optimizer_net = torch.optim.SGD(net.parameters(), lr=d.params.lr_net)
    optimizer_net.zero_grad()
    setup = time.perf_counter() - t_setup

    def get_images(c, n):  # the same real batches as hpcdd's sampler draws
        return data.train.images(d.sampler.indices(c, n))

    ph, losses = Phases(), []
    for _ol in range(steps):
        ph.start()
        loss = torch.tensor(0.0)
        for c in range(num_classes):
            img_real = get_images(c, cfg.batch_real)
            lab_real = torch.ones((img_real.shape[0],), dtype=torch.long) * c
            img_syn = image_syn[c * cfg.ipc:(c + 1) * cfg.ipc].reshape((cfg.ipc, channel, im, im))
            lab_syn = torch.ones((cfg.ipc,), dtype=torch.long) * c
            if d.dsa is not None:  # DiffAugment(x, seed=s) twice: one shared draw per class
                draw = d.dsa.draw(1, gen_dsa, batchmode=True, im_size=im)
                img_real = d.dsa.apply(img_real, draw)
                img_syn = d.dsa.apply(img_syn, draw)
            output_real = net(img_real)
            loss_real = criterion(output_real, lab_real)
            gw_real = torch.autograd.grad(loss_real, net_parameters)
            gw_real = list(_.detach().clone() for _ in gw_real)
            output_syn = net(img_syn)
            loss_syn = criterion(output_syn, lab_syn)
            gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
            loss += official_match_loss(gw_syn, gw_real)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        losses.append(loss.item())
        ph.stop("match")
        ph.start()
        image_syn_train, label_syn_train = copy.deepcopy(image_syn.detach()), copy.deepcopy(label_syn.detach())
        dst_syn_train = torch.utils.data.TensorDataset(image_syn_train, label_syn_train)
        trainloader = torch.utils.data.DataLoader(dst_syn_train, batch_size=d.params.batch_train, shuffle=True,
                                                  num_workers=0, generator=gen_train)
        for _il in range(d.inner_loop):
            official_epoch(trainloader, net, optimizer_net, criterion, d.dsa, gen_train)
        ph.stop("inner")
    return ph.result(setup, losses[0] / num_classes, d.outer_loop)


# -- (b) hpcdd ---------------------------------------------------------------------------------

def run_hpcdd(dsa_on: bool, steps: int, batched: bool, real_chunk: int | None) -> dict:
    from hpcdd.seeding import fresh_net, generator

    t_setup = time.perf_counter()
    cfg, data, d = build(dsa_on)
    d.batched = batched
    if real_chunk:
        d.real_chunk = real_chunk
    # what DC.step runs, with timers between the phases
    net = fresh_net(cfg.net, data.info, cfg.seed, "dc-net-0", d.device)
    net.train()
    opt_net = torch.optim.SGD(net.parameters(), lr=d.params.lr_net, momentum=d.params.momentum_net)
    gens = {k: generator(cfg.seed, f"dc-{k}-0") for k in ("dsa", "train", "bn")}
    setup = time.perf_counter() - t_setup
    ph, losses = Phases(), []
    for _ol in range(steps):
        ph.start()
        real, syn = d.batches(net, gens["dsa"])
        loss = d.match(net, real, syn)
        (grad,) = torch.autograd.grad(loss, d.images)
        d.optimizer.zero_grad(set_to_none=True)
        d.images.grad = grad
        d.optimizer.step()
        losses.append(loss.item())
        ph.stop("match")
        ph.start()
        d.train_net(net, opt_net, gens["train"])
        ph.stop("inner")
    return ph.result(setup, losses[0] / data.info.num_classes, d.outer_loop)


def worker(args) -> None:
    """One variant in this process; prints one JSON line."""
    malloc = "plain"
    if args.worker != "official":  # official-tuned, hpcdd, hpcdd-loop
        from hpcdd.runtime.malloc import tune_malloc

        malloc = "tuned" if tune_malloc() else "plain"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    if args.worker.startswith("official"):
        out = run_official(args.dsa == "on", args.steps)
    else:
        out = run_hpcdd(args.dsa == "on", args.steps, args.worker == "hpcdd", args.real_chunk)
    out.update(malloc=malloc, threads=torch.get_num_threads())
    print("RESULT " + json.dumps(out), flush=True)


# -- orchestration ----------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="outer steps (match + inner phase) timed per variant")
    ap.add_argument("--dsa", default="both", choices=["both", "on", "off"])
    ap.add_argument("--variants", default="official,hpcdd,hpcdd-loop")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--real-chunk", type=int, default=None, help="hpcdd real-gradient chunk (default: REAL_CHUNK)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_dc.csv"))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    command = "python bench/bench_dc.py " + shlex.join(sys.argv[1:])
    meta = {"commit": git_head(ROOT, ["hpcdd", "bench/bench_dc.py"]), "host": platform.node(),
            "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows = []
    for dsa in (["on", "off"] if args.dsa == "both" else [args.dsa]):
        firsts = {}
        for variant in args.variants.split(","):
            load = os.getloadavg()
            cmd = [sys.executable, __file__, "--worker", variant, "--dsa", dsa, "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--real-chunk", str(args.real_chunk)] if args.real_chunk else []
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                raise SystemExit(f"{variant} dsa={dsa} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
            match, inner = min(r["wall"]["match"]), min(r["wall"]["inner"])
            cmatch, cinner = float(np.mean(r["cpu"]["match"])), float(np.mean(r["cpu"]["inner"]))
            outer = r["outer_loop"]
            per_iter = r["setup"] + outer * match + (outer - 1) * inner
            cpu_iter = outer * cmatch + (outer - 1) * cinner
            firsts[variant] = r["loss_first"]
            rows.append({
                "variant": variant, "dsa": dsa, "malloc": r["malloc"], "steps_timed": args.steps,
                "sec_match_step_min": round(match, 2), "sec_inner_phase_min": round(inner, 2),
                "sec_per_outer_iter": round(per_iter, 1),
                "cpu_match_step": round(cmatch, 2), "cpu_inner_phase": round(cinner, 2),
                "cpu_sec_per_outer_iter": round(cpu_iter, 1), "extrapolated": args.steps < outer,
                "loss_first": r["loss_first"], "loss_rel_diff": None, "threads": r["threads"],
                "load1_start": round(load[0], 2), "load5_start": round(load[1], 2),
                "load1_end": round(os.getloadavg()[0], 2), **meta, "command": command,
            })
            print(f"dsa={dsa} {variant:11s} wall: match {match:6.2f} s, inner phase {inner:6.2f} s -> "
                  f"{per_iter:6.1f} s/iter; cpu: {cmatch:6.2f} s, {cinner:6.2f} s -> {cpu_iter:6.1f} s/iter; "
                  f"loss_first {r['loss_first']:.6f}; load {load[0]:.1f}", flush=True)
        ref = firsts.get("official")
        for row in rows:
            if row["dsa"] == dsa and ref is not None:
                row["loss_rel_diff"] = f"{abs(row['loss_first'] - ref) / abs(ref):.2e}"
    append_rows(args.out, rows)


if __name__ == "__main__":
    main()
