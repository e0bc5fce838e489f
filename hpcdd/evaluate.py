"""Evaluation by the DC protocol: train fresh nets from scratch on a source's images, test on the
real test set, report the last-epoch accuracy as mean +- std over ``n`` models.

Protocol (Zhao et al., ICLR 2021): SGD lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at
epoch E/2, batch 256, DSA augmentation with per-sample parameters, E = 1000 by default. Every
result carries ``EvalConfig.protocol`` (e.g. ``dc1000``) so budgets are never mixed.

Two kinds: ``fixed`` trains each model on one image set (a generator samples it once per model,
seeded); ``resample`` draws fresh generator images every epoch, as DiM's evaluation does (we report
the last epoch, not DiM's best). Each finished model is handed to ``on_model`` at once, so a
preempted evaluation resumes at the next model.

The models of one architecture can train as one batched ensemble (:mod:`hpcdd.ensemble`; exec
``eval_ensemble``): each keeps its own init, order, augmentation and images, so its accuracy is
the one it gets alone. A preempted ensemble restarts its unfinished models at the next start.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hpcdd.artefact import Source, SyntheticSet
from hpcdd.augment import DSA, default_strategy
from hpcdd.config import ENSEMBLE_MODES, EvalConfig
from hpcdd.data import DatasetInfo, ImageSet
from hpcdd.ensemble import NotEnsemblable, augment_many, ensemble_loss, group_nets, split_states
from hpcdd.errors import CheckpointError
from hpcdd.runtime.preempt import Interrupted
from hpcdd.runtime.progress import progress as progress_of
from hpcdd.seeding import fresh_net, generator

TEST_BATCH = 500


def train_from_scratch(
    net: torch.nn.Module,
    images_for_epoch: Callable[[int], SyntheticSet],
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
    """Train ``net`` on ``images_for_epoch(e)`` at each epoch ``e`` (one of the protocol's models).

    Raises ``Interrupted`` between epochs when ``should_stop()`` is true (preemption).
    """
    opt, sched = _protocol_sgd(net, lr, epochs)
    net.train()
    for epoch in progress_of(0, epochs, desc=desc, enabled=progress, leave=False):
        if should_stop is not None and should_stop():
            raise Interrupted(None)
        syn = images_for_epoch(epoch)
        images, labels = syn.images.to(device), syn.labels.to(device)
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


def train_grouped(
    grouped: torch.nn.Module,
    images_for_epoch: Sequence[Callable[[int], SyntheticSet]],
    gens: Sequence[torch.Generator],
    *,
    epochs: int,
    lr: float,
    batch: int,
    dsa: DSA | None,
    device: torch.device,
    progress: bool = False,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
) -> torch.nn.Module:
    """``train_from_scratch`` for the N models of ``grouped`` (:func:`hpcdd.ensemble.group_nets`) at
    once: model m trains on ``images_for_epoch[m](e)`` with order and augmentation drawn from
    ``gens[m]``, in the same sequence of draws as alone.

    Raises ``Interrupted`` between epochs when ``should_stop()`` is true (the whole group stops).
    """
    opt, sched = _protocol_sgd(grouped, lr, epochs)
    grouped.train()
    for epoch in progress_of(0, epochs, desc=desc, enabled=progress, leave=False):
        if should_stop is not None and should_stop():
            raise Interrupted(None)
        sets = [fn(epoch) for fn in images_for_epoch]
        images = [s.images.to(device) for s in sets]
        labels = [s.labels.to(device) for s in sets]
        size = len(images[0])
        if any(len(x) != size for x in images):
            raise ValueError(f"ensemble members need equally many images, got {[len(x) for x in images]}")
        orders = [torch.randperm(size, generator=g).to(device) for g in gens]
        for start in range(0, size, batch):
            idx = [order[start:start + batch] for order in orders]
            xs = [x[i] for x, i in zip(images, idx)]
            if dsa is not None:
                xs = augment_many(dsa, xs, gens)
            loss = ensemble_loss(grouped(torch.cat(xs, dim=1)), [y[i] for y, i in zip(labels, idx)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return grouped


def _protocol_sgd(net: torch.nn.Module, lr: float, epochs: int) -> tuple[torch.optim.SGD, Any]:
    """The protocol's optimiser: SGD momentum 0.9, weight decay 5e-4, lr x0.1 at epoch E/2."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[max(1, epochs // 2)], gamma=0.1)


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, test: ImageSet, device: torch.device) -> float:
    """Top-1 accuracy of ``net`` on the real test split, in [0, 1]."""
    net.eval()
    correct = 0
    for x, y in test.batches(TEST_BATCH):
        correct += int((net(x.to(device)).argmax(1) == y.to(device)).sum())
    return correct / len(test)


def check_synset(syn: SyntheticSet, info: DatasetInfo, where: str, ipc: int | None = None) -> None:
    """Refuse a synthetic set that cannot be trained on for this dataset (one-line error); with
    ``ipc``, also one whose classes do not each hold exactly ``ipc`` images."""
    images, labels = syn.images, syn.labels
    expected = (info.channels, info.im_size, info.im_size)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise CheckpointError(f"{where}: images have shape {shape}, {info.name} needs (N, *{expected})")
    if not images.is_floating_point():
        raise CheckpointError(f"{where}: images must be floating point, got {images.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() != images.shape[0]:
        n = labels.numel() if isinstance(labels, torch.Tensor) else "no"
        raise CheckpointError(f"{where}: {images.shape[0]} images but {n} labels")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise CheckpointError(f"{where}: labels must be integers, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
        raise CheckpointError(f"{where}: labels outside 0..{info.num_classes - 1}")
    if images.numel() == 0:
        raise CheckpointError(f"{where}: holds no images")
    if not torch.isfinite(images).all():
        raise CheckpointError(f"{where}: images contain NaN or Inf")
    if ipc is not None:
        counts = torch.bincount(labels.long(), minlength=info.num_classes).tolist()
        wrong = [c for c, n in enumerate(counts) if n != ipc]
        if wrong:
            c = wrong[0]
            raise CheckpointError(f"{where}: class {c} has {counts[c]} image(s), but the run has ipc {ipc} "
                                  f"({len(wrong)} of {info.num_classes} classes differ)")


def evaluate_source(
    source: Source,
    test: ImageSet,
    info: DatasetInfo,
    ev: EvalConfig,
    *,
    seed: int,
    dataset: str,
    ipc: int | None,
    device: torch.device,
    finished: Mapping[tuple[str, int], float] | None = None,
    on_model: Callable[[str, int, float], None] | None = None,
    purpose: str = "eval",
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    where: str = "source",
    ensemble: str = "auto",
    ensemble_max: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{arch: {"accs": [...], "acc_mean": m, "acc_std": s}}`` (std over models, ddof=0).

    ``finished`` holds accuracies of models already trained (skipped); ``on_model(arch, k, acc)``
    is called as each new one finishes. Augmentation is the dataset's default DSA strategy (the
    protocol's), whatever the distillation used, so rows of one protocol are comparable.
    ``ensemble``/``ensemble_max``: see :func:`train_models` (they never change a result beyond
    float rounding).
    """
    finished = dict(finished or {})
    todo = [(arch, k) for arch in ev.models for k in range(ev.n) if (arch, k) not in finished]
    finished.update(train_models(
        source, test, info, ev, todo, seed=seed, dataset=dataset, ipc=ipc, device=device,
        on_model=on_model, purpose=purpose, progress=progress, should_stop=should_stop, where=where,
        ensemble=ensemble, ensemble_max=ensemble_max, log=log))
    out: dict[str, dict[str, Any]] = {}
    for arch in ev.models:
        accs = [finished[(arch, k)] for k in range(ev.n)]
        out[arch] = {"accs": accs, "acc_mean": float(np.mean(accs)), "acc_std": float(np.std(accs))}
    return out


def train_models(
    source: Source,
    test: ImageSet,
    info: DatasetInfo,
    ev: EvalConfig,
    models: Sequence[tuple[str, int]],
    *,
    seed: int,
    dataset: str,
    ipc: int | None,
    device: torch.device,
    on_model: Callable[[str, int, float], None] | None = None,
    purpose: str = "eval",
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    where: str = "source",
    ensemble: str = "auto",
    ensemble_max: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[tuple[str, int], float]:
    """Train and test the evaluation's ``models`` ((arch, k) pairs) on one device; their accuracies.

    Model ``(arch, k)`` always gets the same init, data order, augmentation and images (all drawn
    from ``seed`` and ``{purpose}-{arch}-{k}``), whichever other models it is trained with.
    ``ensemble``: ``on`` trains the models of one architecture as one batched ensemble (at most
    ``ensemble_max`` per group, 0: all), ``off`` one by one, ``auto`` as an ensemble on an
    accelerator and one by one on CPU (there a group matches one-by-one bitwise only at one thread,
    where it measured slower: ``results/bench_ensemble.csv``). An
    architecture whose nets cannot be grouped is trained one by one (``log`` says so). Each model
    is handed to ``on_model`` as soon as it is tested; a group finishes all its models together,
    and a group stopped by ``should_stop`` (``Interrupted``) keeps none of them.
    """
    dsa = DSA(default_strategy(dataset)) if ev.dsa else None
    accs: dict[tuple[str, int], float] = {}
    for group in _groups(models, ensemble_size(ensemble, ensemble_max, device)):
        arch = group[0][0]
        tags = [f"{purpose}-{arch}-{k}" for _, k in group]
        fns = [_images(source, ev, ipc, seed, tag, info, where) for tag in tags]
        nets = [fresh_net(arch, info, seed, f"{tag}-init", device) for tag in tags]
        gens = [generator(seed, f"{tag}-train") for tag in tags]
        kw = dict(epochs=ev.epochs, lr=ev.lr, batch=ev.batch, dsa=dsa, device=device, progress=progress,
                  should_stop=should_stop)
        grouped = _grouped(arch, nets, info, log) if len(group) > 1 else None
        if grouped is not None:
            ks = f"{group[0][1] + 1}-{group[-1][1] + 1}"
            if log is not None:
                log(f"{arch} models {ks}/{ev.n}: training as one ensemble")
            train_grouped(grouped, fns, gens, desc=f"eval {arch} {ks}/{ev.n} (ensemble)", **kw)
            for net, state in zip(nets, split_states(grouped, len(nets))):
                net.load_state_dict(state)
        else:
            for (_, k), net, fn, gen in zip(group, nets, fns, gens):
                train_from_scratch(net, fn, gen=gen, desc=f"eval {arch} {k + 1}/{ev.n}", **kw)
        for (_, k), net in zip(group, nets):
            accs[(arch, k)] = test_accuracy(net, test, device)
            if on_model is not None:
                on_model(arch, k, accs[(arch, k)])
    return accs


def ensemble_size(mode: str, most: int, device: torch.device) -> int:
    """Models per ensemble for the exec setting ``mode`` (auto|on|off) and ``most`` (0: no limit)."""
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"ensemble must be one of {', '.join(ENSEMBLE_MODES)}, got {mode!r}")
    if mode == "off" or (mode == "auto" and device.type == "cpu"):
        return 1
    return most if most > 0 else 1 << 30


def _groups(models: Sequence[tuple[str, int]], size: int) -> list[list[tuple[str, int]]]:
    """``models`` in order, cut into runs of one architecture of at most ``size``."""
    groups: list[list[tuple[str, int]]] = []
    for pair in models:
        if groups and groups[-1][0][0] == pair[0] and len(groups[-1]) < size:
            groups[-1].append(pair)
        else:
            groups.append([pair])
    return groups


def _grouped(arch: str, nets: list[torch.nn.Module], info: DatasetInfo,
             log: Callable[[str], None] | None) -> torch.nn.Module | None:
    """The nets as one grouped module, or None (logged) when their architecture cannot be grouped."""
    try:
        return group_nets(nets, (info.channels, info.im_size, info.im_size))
    except NotEnsemblable as e:
        if log is not None:
            log(f"{arch}: {len(nets)} models trained one by one, not as an ensemble: {e}")
        return None


def _images(source: Source, ev: EvalConfig, ipc: int | None, seed: int, tag: str,
            info: DatasetInfo, where: str) -> Callable[[int], SyntheticSet]:
    """The per-epoch image set of one model: one draw (fixed) or a fresh one per epoch."""
    if ev.kind == "resample":
        def fresh(epoch: int) -> SyntheticSet:
            return source.sample(ipc, generator(seed, f"{tag}-epoch{epoch}"))
        check_synset(fresh(0), info, where, ipc=ipc)
        return fresh
    syn = source.sample(ipc, generator(seed, f"{tag}-sample"))
    check_synset(syn, info, where, ipc=ipc)
    return lambda epoch: syn


def flat_metrics(per_arch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flatten to result.json's columns: the first arch unsuffixed, every arch as ``__<arch>``."""
    row: dict[str, Any] = {}
    for i, (arch, m) in enumerate(per_arch.items()):
        if i == 0:
            row.update(acc_mean=m["acc_mean"], acc_std=m["acc_std"], accs=m["accs"])
        row.update({f"acc_mean__{arch}": m["acc_mean"], f"acc_std__{arch}": m["acc_std"],
                    f"accs__{arch}": m["accs"]})
    return row
