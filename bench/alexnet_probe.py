"""Why does AlexNet train poorly on generated sets? Evidence on one generator and real images.

For ``ipc`` images per class drawn from a generator (a run's ``generator.pt``, a pretraining's
``gan.pt``, or one of its checkpoints) and ``ipc`` random real images per class, it reports:

* input statistics of each set in the normalised space the nets see: mean, std, min, max, the
  share of pixels at the background value (real: 0 -> (0 - mean) / std), the mean within-class
  pairwise distance (diversity);
* for each net in ``--nets`` and each variant, ``--models`` fresh models trained by the DC
  protocol (``--epochs``, lr ``--lr`` or the variant's, DSA): the training loss at the first and
  last epoch, the share of dead ReLU units at the end (AlexNet's feature maps that are zero for
  every training image), and the accuracy on ``--test`` real test images. Variants: ``as-is``;
  ``matched`` (the generated set shifted and scaled to the real set's mean and std: an
  input-statistics cause recovers here); ``lr0.001``; ``--variants ''``: real images only.

Rows go to ``--out`` (results/alexnet_probe.csv).
Usage: python bench/alexnet_probe.py GENERATOR_FILE [--ipc 10] [--models 3] [--epochs 100]
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from csvrows import append_rows
from hpcdd.artefact import SyntheticSet, load_source
from hpcdd.augment import DSA, default_strategy
from hpcdd.data import DatasetInfo, load_dataset
from hpcdd.generative.gan import generator_source
from hpcdd.generative.nets import build_generator
from hpcdd.io import try_torch_load
from hpcdd.runtime.malloc import tune_malloc
from hpcdd.runtime.provenance import git_commit
from hpcdd.seeding import fresh_net, generator
from hpcdd.specs.generative import GanPretrainConfig


def load_generator(path: Path, info: DatasetInfo):
    """A Source from generator.pt, gan.pt or a gan_pretrain checkpoint (ckpt-*.pt)."""
    if path.name == "generator.pt":
        return load_source(path, "generator")[0]
    state = try_torch_load(path)
    if path.name.startswith("ckpt-"):  # a pretraining checkpoint: its config is the dir's config.yaml
        import yaml

        cfg = GanPretrainConfig(**yaml.safe_load((path.parent.parent / "config.yaml").read_text()))
        weights = state["job"]["G"]
    else:
        cfg, weights = GanPretrainConfig(**state["config"]), state["G"]
    G = build_generator(info.num_classes, info.channels, info.im_size, nz=cfg.nz, width=cfg.width,
                        label_mode=cfg.label_mode)
    G.load_state_dict(weights)
    return generator_source(G, cfg, info)


def stats(syn: SyntheticSet, info: DatasetInfo) -> dict[str, float]:
    x = syn.images
    background = -info.mean[0] / info.std[0]
    spread = []
    for c in syn.labels.unique():
        xc = x[syn.labels == c].flatten(1)
        if len(xc) > 1:
            d = torch.cdist(xc, xc)
            spread.append(d.sum() / (len(xc) * (len(xc) - 1)))
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
            "at_background": float(((x - background).abs() < 0.05).float().mean()),
            "within_class_dist": float(torch.stack(spread).mean()) if spread else float("nan")}


def dead_relus(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of the ReLU channels that output zero for every image of ``x``."""
    dead, total = 0, 0
    h = x
    with torch.no_grad():
        for stage in net.body.children():
            h = stage(h)
            alive = (h > 0).flatten(2).any(2).any(0) if h.dim() == 4 else (h > 0).any(0)
            dead, total = dead + int((~alive).sum()), total + alive.numel()
    return dead / total


def train(arch: str, syn: SyntheticSet, data: Any, args: argparse.Namespace, lr: float, k: int) -> dict[str, Any]:
    """One model by the DC protocol; the mean training loss of the first and last epoch."""
    info = data.info
    net = fresh_net(arch, info, k, f"probe-{arch}")
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(1, args.epochs // 2)], gamma=0.1)
    dsa, gen = DSA(default_strategy(info.name)), generator(k, f"probe-train-{arch}")
    losses = []
    net.train()
    for _ in range(args.epochs):
        order, total = torch.randperm(len(syn.images), generator=gen), 0.0
        for start in range(0, len(order), 256):
            idx = order[start : start + 256]
            loss = F.cross_entropy(net(dsa(syn.images[idx], gen, batchmode=False)), syn.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
        sched.step()
    net.eval()
    x, y = data.test_x[: args.test], data.test_y[: args.test]
    with torch.no_grad():
        acc = float(torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).eq(y).float().mean())
    return {"loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "dead_relu": round(dead_relus(net, syn.images), 4), "acc": round(acc, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("generator", type=Path)
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--nets", default="alexnet,convnet3")
    ap.add_argument("--variants", default="as-is,matched,lr0.001")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--model-ids", default=None, help="comma-separated model indices (default: 0..models-1)")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--test", type=int, default=2000, help="real test images scored (the first N)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/alexnet_probe.csv")
    args = ap.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    info, bank = data.info, data.train
    data.test_x, data.test_y = next(data.test.batches(len(data.test)))
    source = load_generator(args.generator, info)
    generated = source.sample(args.ipc, generator(0, "probe-generated"))
    idx = torch.cat([bank.sample(c, args.ipc, generator(0, f"probe-real-{c}")) for c in range(info.num_classes)])
    real = SyntheticSet(bank.images(idx), bank.labels[idx])
    g_stats, r_stats = stats(generated, info), stats(real, info)
    matched = SyntheticSet((generated.images - g_stats["mean"]) / g_stats["std"] * r_stats["std"] + r_stats["mean"],
                           generated.labels)
    meta = {"generator": str(args.generator), "ipc": args.ipc, "epochs": args.epochs, "test_images": args.test,
            "commit": git_commit()[:12], "host": platform.node(), "cpu_threads": torch.get_num_threads(),
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}
    for name, s in (("generated", g_stats), ("real", r_stats)):
        print(f"{name:9s} " + "  ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
    sets = {"as-is": ("generated", generated, args.lr), "matched": ("generated", matched, args.lr),
            "lr0.001": ("generated", generated, 0.001)}
    rows = []
    variants = [v for v in args.variants.split(",") if v]
    ids = [int(k) for k in args.model_ids.split(",")] if args.model_ids else list(range(args.models))
    for arch in args.nets.split(","):
        cases = [("real", "as-is", real, args.lr)] + [(sets[v][0], v, sets[v][1], sets[v][2]) for v in variants]
        if "lr0.001" in variants:
            cases.append(("real", "lr0.001", real, 0.001))
        for kind, variant, syn, lr in cases:
            for k in ids:
                res = train(arch, syn, data, args, lr, k)
                st = stats(syn, info)
                rows.append({"net": arch, "set": kind, "variant": variant, "lr": lr, "model": k, **res,
                             **{f"in_{key}": round(v, 4) for key, v in st.items()},
                             "load": round(os.getloadavg()[0], 2), **meta})
                print(f"{arch:9s} {kind:9s} {variant:8s} model {k}: acc {res['acc']:.4f}  loss "
                      f"{res['loss_first']:.3f} -> {res['loss_last']:.3f}  dead ReLU {res['dead_relu']:.3f}", flush=True)
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
