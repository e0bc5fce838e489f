"""Evaluation by the DC protocol: train fresh nets from scratch on the synthetic set, test on
the real test set, report the last-epoch accuracy as mean +- std over ``eval_n`` models.

Protocol (Zhao et al., ICLR 2021): SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at
epoch E/2, batch 256, DSA augmentation with per-sample parameters, E = 1000 by default.
Every result carries ``cfg.protocol`` (e.g. ``dc1000``) so budgets are never mixed.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hpcdd.augment import DSA, default_strategy
from hpcdd.config import RunConfig
from hpcdd.data import DatasetInfo, ImageSet
from hpcdd.distill.base import SyntheticSet
from hpcdd.runtime.preempt import Interrupted
from hpcdd.seeding import fresh_net, generator

TEST_BATCH = 500


def train_from_scratch(
    net: torch.nn.Module,
    syn: SyntheticSet,
    *,
    epochs: int,
    lr: float,
    batch: int,
    dsa: DSA | None,
    gen: torch.Generator,
    device: torch.device,
    progress: bool = False,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> torch.nn.Module:
    """Train ``net`` on the synthetic set (one of the protocol's fresh models).

    Raises ``Interrupted`` between epochs when ``should_stop()`` is true (preemption).
    """
    images, labels = syn.images.to(device), syn.labels.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(1, epochs // 2)], gamma=0.1)
    net.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        if should_stop is not None and should_stop():
            raise Interrupted(None)
        order = torch.randperm(len(images), generator=gen).to(device)
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            x = images[idx]
            if dsa is not None:
                x = dsa(x, gen, batchmode=False)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return net


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, test: ImageSet, device: torch.device) -> float:
    """Top-1 accuracy of ``net`` on the real test split, in [0, 1]."""
    net.eval()
    correct = 0
    for x, y in test.batches(TEST_BATCH):
        correct += int((net(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / len(test)


def evaluate_synset(
    syn: SyntheticSet,
    test: ImageSet,
    info: DatasetInfo,
    cfg: RunConfig,
    device: torch.device,
    *,
    models: tuple[str, ...] | None = None,
    n: int | None = None,
    epochs: int | None = None,
    purpose: str = "eval",
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{arch: {"accs": [...], "acc_mean": m, "acc_std": s}}`` (std over models, ddof=0).

    Augmentation is the dataset's default DSA strategy (the protocol's), whatever strategy
    the distillation used, so results labelled with one protocol are comparable.
    """
    models = models or cfg.eval_models
    n = n or cfg.eval_n
    epochs = epochs or cfg.eval_epochs
    dsa = DSA(default_strategy(cfg.dataset)) if cfg.eval_dsa else None
    out: dict[str, dict[str, Any]] = {}
    for arch in models:
        accs = []
        for k in range(n):
            tag = f"{purpose}-{arch}-{k}"
            net = fresh_net(arch, info, cfg.seed, f"{tag}-init", device)
            train_from_scratch(
                net, syn, epochs=epochs, lr=cfg.eval_lr, batch=cfg.eval_batch, dsa=dsa,
                gen=generator(cfg.seed, f"{tag}-train"), device=device, progress=progress,
                desc=f"eval {arch} {k + 1}/{n}", should_stop=should_stop,
            )
            accs.append(test_accuracy(net, test, device))
        out[arch] = {"accs": accs, "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs))}
    return out


def flat_metrics(per_arch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flatten to result.json's columns: the first arch unsuffixed, every arch as ``__<arch>``."""
    row: dict[str, Any] = {}
    for i, (arch, m) in enumerate(per_arch.items()):
        if i == 0:
            row.update(acc_mean=m["acc_mean"], acc_std=m["acc_std"], accs=m["accs"])
        row.update({f"acc_mean__{arch}": m["acc_mean"], f"acc_std__{arch}": m["acc_std"],
                    f"accs__{arch}": m["accs"]})
    return row
