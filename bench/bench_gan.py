"""Stage 1's cost and bf16's effect: seconds per GAN step by width and precision, where the step's
time goes, and (``--quality``) what bf16 autocast does to the samples.

Timing (default): for each width and precision, ``--steps`` pretraining steps (batch ``--batch``,
after ``--warmup``) of hpcdd's GAN step on real images, and one profiled step split into its parts:
the generator update, the critic update without the gradient penalty, and the penalty alone
(its forward, the create_graph gradient, and the double backward into the critic). Rows go to
``--out`` (results/bench_gan.csv) with wall and process-CPU seconds (on a shared machine the CPU
seconds at ``--threads 1`` are the steadier number), the load average, commit, host, threads.

Quality (``--quality``): two short pretrainings from the same seed and batches (or, with ``--init``,
continuations of a pretraining's checkpoint, which is scored too as ``start``), fp32 and bf16, at
``--quality-width`` for ``--quality-steps`` steps, then a ConvNet3 trained on real images
(``--clf-steps`` steps of 256) labels ``--per-class`` generated images of each class: the share it
labels as their conditioning class, and the mean/std of the images, per precision
(results/bench_gan_quality.csv).

Usage: python bench/bench_gan.py [--widths 32,64,128] [--precisions fp32,bf16] [--steps 5]
       python bench/bench_gan.py --quality [--quality-steps 300] [--quality-width 32] [--clf-steps 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from csvrows import append_rows
from hpcdd.data import load_dataset
from hpcdd.generative.gan import autocast, build_gan, gan_step
from hpcdd.generative.losses import d_loss, from_normalized, frozen, g_loss, gradient_penalty, to_normalized
from hpcdd.generative.nets import class_major_labels, generate, sample_noise
from hpcdd.runtime.malloc import tune_malloc
from hpcdd.runtime.provenance import git_commit
from hpcdd.seeding import fresh_net, generator
from hpcdd.specs.generative import GanPretrainConfig


def real_batches(data: Any, batch: int, seed: int):
    """Deterministic real batches in [-1, 1] (the same for every width and precision)."""
    g = generator(seed, "bench-gan-batches")
    info = data.info
    while True:
        idx = torch.randint(len(data), (batch,), generator=g)
        yield from_normalized(data.images(idx), info.mean, info.std), data.labels[idx]


def gan(width: int, batch: int, precision: str, info: Any, steps: int | None = None):
    cfg = GanPretrainConfig(dataset=info.name, width=width, batch=batch, precision=precision, steps=steps)
    G, D, opt_g, opt_d = build_gan(cfg, info, torch.device("cpu"))
    return SimpleNamespace(cfg=cfg, G=G, D=D, opt_g=opt_g, opt_d=opt_d, gen=generator(0, "bench-gan-noise"))


def step(m: SimpleNamespace, real: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    return gan_step(m.G, m.D, m.opt_g, m.opt_d, real, labels, num_classes=num_classes, gp_lambda=10.0,
                    aux_weight=1.0, gen=m.gen, precision=m.cfg.precision)


def profile(m: SimpleNamespace, real: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Seconds of the step's three parts, each timed alone (the same ops as gan_step)."""
    out = {}
    dev, prec = real.device, m.cfg.precision
    t0 = time.perf_counter()
    with autocast(dev, prec):
        fake = m.G(sample_noise(len(labels), m.G.nz, m.gen), labels)
        with frozen(m.D):
            loss, _ = g_loss(m.D, fake, labels, aux_weight=1.0)
    m.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    m.opt_g.step()
    out["g_step_s"] = time.perf_counter() - t0
    with torch.no_grad(), autocast(dev, prec):
        fake = m.G(sample_noise(len(labels), m.G.nz, m.gen), labels)
    t0 = time.perf_counter()
    with autocast(dev, prec):
        critic, logits = m.D(torch.cat([real, fake.to(real.dtype)]))
        n = len(labels)
        loss = critic[n:].mean() - critic[:n].mean() + F.cross_entropy(logits[:n], labels)
    m.opt_d.zero_grad(set_to_none=True)
    loss.backward()
    out["d_step_no_gp_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with autocast(dev, prec):
        gp = gradient_penalty(m.D, real, fake, m.gen)
    (10.0 * gp).backward()
    out["gp_s"] = time.perf_counter() - t0
    m.opt_d.step()
    return out


def time_widths(args: argparse.Namespace, data: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    info = data.info
    for width in map(int, args.widths.split(",")):
        for precision in args.precisions.split(","):
            m = gan(width, args.batch, precision, info)
            batches = real_batches(data, args.batch, 0)
            for _ in range(args.warmup):
                step(m, *next(batches), info.num_classes)
            load0 = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step(m, *next(batches), info.num_classes)
            sec, cpu = (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps
            parts = profile(m, *next(batches), info.num_classes)
            rows.append({"kind": "timing", "width": width, "precision": precision, "batch": args.batch,
                         "s_per_step": round(sec, 4), "cpu_s_per_step": round(cpu, 4),
                         **{k: round(v, 4) for k, v in parts.items()},
                         "steps": args.steps, "load_before": round(load0, 2),
                         "load_after": round(os.getloadavg()[0], 2), **meta})
            print(f"width {width:4d} {precision}: {sec:.3f} s/step (CPU {cpu:.3f})  "
                  + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
    return rows


def train_classifier(data: Any, steps: int) -> torch.nn.Module:
    net = fresh_net("convnet3", data.info, 0, "bench-gan-clf")
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = generator(0, "bench-gan-clf-batches")
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(data), (256,), generator=g)
        loss = F.cross_entropy(net(data.images(idx)), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).eq(y).float().mean())


def classifier(data: Any, steps: int, cache: Path | None) -> torch.nn.Module:
    """The real-trained ConvNet3 (deterministic: loaded from ``cache`` when it holds one)."""
    if cache is not None and cache.exists():
        net = fresh_net("convnet3", data.info, 0, "bench-gan-clf")
        net.load_state_dict(torch.load(cache, weights_only=True))
        return net.eval()
    net = train_classifier(data, steps)
    if cache is not None:
        torch.save(net.state_dict(), cache)
    return net


def start_from(m: SimpleNamespace, path: Path) -> int:
    """Load generator, critic and optimisers from a pretraining's gan.pt or checkpoint; its step."""
    state = torch.load(path, weights_only=True)
    job = state.get("job", state)
    for key in ("G", "D", "opt_g", "opt_d"):
        getattr(m, key).load_state_dict(job[key])
    return int(state.get("it", 0))


def quality(args: argparse.Namespace, data: Any, test: Any, meta: dict[str, Any]) -> list[dict[str, Any]]:
    info = data.info
    t0 = time.perf_counter()
    clf = classifier(data, args.clf_steps, args.clf_cache)
    x_test, y_test = next(test.batches(len(test)))
    real_acc = accuracy(clf, x_test, y_test)
    print(f"classifier: {real_acc:.4f} on the real test set ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    labels = class_major_labels(info.num_classes, args.per_class)
    for precision in ("start", "fp32", "bf16") if args.init else ("fp32", "bf16"):
        m = gan(args.quality_width, args.batch, "fp32" if precision == "start" else precision, info)
        first = start_from(m, args.init) if args.init else 0
        batches = real_batches(data, args.batch, 0)
        steps = 0 if precision == "start" else args.quality_steps
        t0 = time.perf_counter()
        for _ in range(steps):
            step(m, *next(batches), info.num_classes)
        sec = time.perf_counter() - t0
        x = to_normalized(generate(m.G, labels, generator(0, "bench-gan-samples")), info.mean, info.std)
        rows.append({"kind": "quality", "width": args.quality_width, "precision": precision, "batch": args.batch,
                     "init": str(args.init or ""), "init_step": first,
                     "steps": steps, "s_per_step": round(sec / max(1, steps), 4),
                     "clf_acc_on_generated": round(accuracy(clf, x, labels), 4), "clf_acc_on_real_test": real_acc,
                     "gen_mean": round(float(x.mean()), 4), "gen_std": round(float(x.std()), 4),
                     "real_mean": round(float(x_test.mean()), 4), "real_std": round(float(x_test.std()), 4),
                     "load_after": round(os.getloadavg()[0], 2), **meta})
        print(f"{precision}: {sec:.0f} s for {steps} steps; the classifier labels "
              f"{rows[-1]['clf_acc_on_generated']:.4f} of the generated images as their class", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", action="store_true", help="the bf16 sample-quality check instead of timings")
    ap.add_argument("--quality-steps", type=int, default=300)
    ap.add_argument("--quality-width", type=int, default=32)
    ap.add_argument("--clf-steps", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from a pretraining's gan.pt or checkpoint (its width: --quality-width)")
    ap.add_argument("--clf-cache", type=Path, default=None, help="save/reuse the classifier's weights here")
    ap.add_argument("--dataset", default="fashionmnist", help="the committed rows: fashionmnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="default: results/bench_gan.csv (--quality: bench_gan_quality.csv)")
    args = ap.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, root=args.data_root)
    meta = {"dataset": args.dataset, "commit": git_commit()[:12], "host": platform.node(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    rows = quality(args, data.train, data.test, meta) if args.quality else time_widths(args, data.train, meta)
    append_rows(args.out or f"results/bench_gan{'_quality' if args.quality else ''}.csv", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
