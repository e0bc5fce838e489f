"""DREAM (Liu et al., ICCV 2023, "Efficient Dataset Distillation by Representative Matching")
as a sampler every matching method accepts by config alone (``sampler: dream``).

Instead of a random real batch, each class is clustered into k = ``n`` (the real batch size)
groups on the matching net's ``embed()`` features, and the real sample nearest each centroid is
matched against. A class is re-clustered every ``interval`` calls; in between the cached
selection is returned. Parameters: :class:`hpcdd.specs.samplers.DreamParams`.

What runs, per call of ``batch_indices(classes, n, net)``:

* The classes that are due (never clustered for this ``n``, or ``interval`` calls since their
  last clustering) are re-clustered together; the others return their cached selection. Each
  ``(class, n)`` pair keeps its own call counter, so a method that asks for two batch sizes does
  not reset the other's schedule.
* **Candidates.** Per due class a seeded subset of at most ``candidates`` images (a fresh one
  at every clustering; null: the whole class, as the official code) is embedded in no-grad
  chunks of ``EMBED_CHUNK`` images at the run's ``precision`` (bf16 autocast when the run uses
  it). What it saves: the official code embeds every image of every
  class, 23x a DM iteration's real batch on Fashion-MNIST (see ``bench/bench_dream.py``).
* **Eval mode while embedding** (:func:`hpcdd.nets.embed.eval_mode`): BatchNorm uses its running
  statistics and is left untouched (no side effect on the matching net, and chunking cannot
  change the features); for GroupNorm ConvNets (the default) modes change nothing.
* **k-means**: all due classes in ONE :func:`~hpcdd.select.kmeans.kmeans_batched` call (torch:
  one batched Lloyd step for all; FAISS: one shared index), ``kmeans_init`` random by default
  (the official ``fast_pytorch_kmeans`` setting, with its tolerance ``kmeans_tol`` and cap
  ``kmeans_iters``), k-means++ on request. Only the centroids are computed (``assign=False``):
  DREAM never reads the final assignment or the inertia. ``kmeans_pool`` fits on a seeded
  subsample of the candidates.
* **Representatives**: per centroid, the ``query_k`` nearest candidates (nearest first, centroid
  by centroid; ``query_k`` = 1 is DREAM, > 1 is DREAM+'s ``query_match`` with ``n // query_k``
  centroids). Like the official code, a sample nearest two centroids is kept twice
  (``info()['duplicates']`` counts such repeats).
* **When the official code clusters** (``condense.py`` of lyq312318224/DREAM, an IDC plug-in):
  every outer iteration draws a fresh net (``fix_iter`` 1) and runs ``inner_loop`` (100) steps of
  [per-class matching and an image update, then a net update on real data]; each class is
  re-clustered at the steps with ``ot % interval == 0`` (0, 10, ..., 90): 10 clusterings per net,
  9 of them on the partly trained net, never a selection carried to another net. Here
  ``interval`` counts sampler calls: DM (a fresh net per call) clusters every 10th net; DC/DSA
  call once per outer step, so ``interval: 1`` at ipc 10 (10 outer steps per net) clusters every
  outer step, 9 of 10 on the net the inner loop is training, as the official code; at ipc 1 the
  net is never trained before its one matching step.
* **Embeddings are not reused across clusterings**: no built-in method calls the sampler twice
  with an unchanged net (DM draws a fresh net every step, DC/DSA train theirs between outer
  steps, the generative methods train the pool model before every step); within one call every
  due class is embedded once.
* **Refused** (one-line ``ConfigError`` at the first call, see
  :func:`hpcdd.specs.samplers.check_dream`): ``n`` not a multiple of ``query_k``, candidates or a
  pool smaller than the centroids, ``n`` larger than a class, and a call without a net.
* **Seeds.** One base seed is drawn from ``self.generator`` (the run seed's sampler generator);
  the candidates, the pool and the k-means seed of class ``c`` at its ``r``-th clustering for
  batch size ``n`` derive from it and ``(c, n, r)`` only. Batching classes together or apart, and
  resuming, therefore cannot change a selection. ``state_dict`` holds the cached selections,
  counters, statistics and generator state.
* **Timing**: ``embed_seconds`` and ``kmeans_seconds`` (k-means and the nearest-sample search)
  in ``info()``, both synchronised on a GPU; :meth:`seconds` is their sum, which ``run.py``
  subtracts from the distillation loop's time to give the row's ``match_seconds``.

:func:`kmeans_init_indices` is ``init: kmeans`` (DREAM's ``--init kmean``): per class, the
``ipc`` real samples nearest the centroids of a seeded fresh net's embeddings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from hpcdd.config import from_dict
from hpcdd.data import ClassBank
from hpcdd.errors import ConfigError
from hpcdd.nets.embed import embed_nograd, eval_mode
from hpcdd.select.kmeans import kmeans_batched, nearest
from hpcdd.select.samplers import Sampler
from hpcdd.seeding import derive_seed, fresh_net, generator
from hpcdd.specs.samplers import DreamParams, check_dream

EMBED_CHUNK = 256
"""Images per no-grad forward chunk while embedding candidates (eval mode: chunking is exact)."""


@dataclass
class _Slot:
    """The schedule and cached selection of one (class, batch size)."""

    calls: int = 0
    """Calls served so far; a clustering runs when ``calls % interval == 0``."""
    indices: torch.Tensor | None = None
    """Dataset indices of the current selection (CPU int64)."""


class DreamSampler(Sampler):
    """Declared in :mod:`hpcdd.specs.samplers` (parameters: ``DreamParams``)."""

    def __init__(self, bank: ClassBank, seed: int, params: DreamParams | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(bank, seed, params if params is not None else DreamParams(), precision)
        self.base_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._checked: set[int] = set()
        self._dist: Any = None
        self._mine: Sequence[int] | None = None  # several processes: the classes this rank clusters
        self.stats: dict[str, Any] = {
            "reclusterings": 0, "subsampled": False, "candidates_per_class": 0, "pool_size": 0,
            "duplicates": 0, "kmeans_backend": "", "kmeans_iterations": 0,
            "embed_seconds": 0.0, "kmeans_seconds": 0.0,
        }

    # -- seeds --------------------------------------------------------------------------------
    def kmeans_seed(self, c: int, n: int, r: int) -> int:
        """The k-means seed of class ``c``'s ``r``-th clustering (0-based) for batch size ``n``."""
        return derive_seed(self.base_seed, f"dream-kmeans:c{c}:n{n}:r{r}")

    def candidate_indices(self, c: int, n: int, r: int) -> torch.Tensor | None:
        """Positions (within class ``c``, sorted) of the candidates of that clustering, or None
        when the whole class is a candidate (``candidates`` null, or a class no larger)."""
        return _subset(len(self.bank.class_indices[c]), self.params.candidates,
                       generator(self.base_seed, f"dream-candidates:c{c}:n{n}:r{r}"))

    def pool_indices(self, c: int, n: int, r: int, size: int) -> torch.Tensor | None:
        """Positions (within the ``size`` candidates, sorted) clustered at that clustering, or
        None when all are (no ``kmeans_pool``, or no more candidates than it)."""
        return _subset(size, self.params.kmeans_pool, generator(self.base_seed, f"dream-pool:c{c}:n{n}:r{r}"))

    # -- sampling -----------------------------------------------------------------------------
    def indices(self, c: int, n: int, net: nn.Module | None = None) -> torch.Tensor:
        """The ``n`` dataset indices DREAM selects for class ``c`` now (see the module docstring)."""
        return self.batch_indices([c], n, net)[0]

    def batch_indices(self, classes: Sequence[int], n: int, net: nn.Module | None = None) -> list[torch.Tensor]:
        """``indices(c, n, net)`` for every class of one step: the due classes are embedded in
        one pass and clustered by one batched k-means call."""
        classes = [int(c) for c in classes]
        self._check(classes, n, net)
        due = [c for c in dict.fromkeys(classes) if self._slot(c, n).calls % self.params.interval == 0]
        if due:
            self._recluster(due, n, net)
        out = []
        for c in classes:
            slot = self._slots[(c, n)]
            slot.calls += 1
            out.append(slot.indices.clone())
        return out

    def shard(self, dist: Any, classes: Sequence[int]) -> None:
        """Cluster only ``classes`` on this rank; the selections (and counters) of every rank's
        classes are all-gathered after each clustering, so every rank's state is complete."""
        self._dist, self._mine = dist, classes

    def _slot(self, c: int, n: int) -> _Slot:
        return self._slots.setdefault((c, n), _Slot())

    def _check(self, classes: list[int], n: int, net: nn.Module | None) -> None:
        if net is None or not hasattr(net, "embed"):
            raise ConfigError("sampler dream clusters the matching net's embed() features, but this "
                              "method calls the sampler without such a net; use sampler random")
        if n not in self._checked:
            check_dream(self.params, n, min(len(i) for i in self.bank.class_indices))
            self._checked.add(n)
        bad = [c for c in classes if not 0 <= c < len(self.bank.class_indices)]
        if bad:
            raise ConfigError(f"sampler dream: no class {bad[0]} in {self.bank.info.name}")

    def _recluster(self, due: list[int], n: int, net: nn.Module) -> None:
        """Cluster the due classes; several processes: this rank's share, then every rank's
        selections and counters are gathered (seconds: the slowest rank's, as they run at once)."""
        if self._mine is None:
            self._cluster(due, n, net)
            return
        mine = [c for c in due if c in self._mine]
        before = dict(self.stats)
        if mine:
            self._cluster(mine, n, net)
        shared = self._dist.gather(({c: self._slots[(c, n)].indices for c in mine}, dict(self.stats)))
        st = self.stats = dict(before)
        for picked, after in shared:
            for c, idx in picked.items():
                self._slots[(c, n)].indices = idx
            for key in ("reclusterings", "duplicates", "kmeans_iterations"):
                st[key] += after[key] - before[key]
            for key in ("candidates_per_class", "pool_size"):
                st[key] = max(st[key], after[key])
            st["subsampled"] = st["subsampled"] or after["subsampled"]
            st["kmeans_backend"] = after["kmeans_backend"] or st["kmeans_backend"]
        for key in ("embed_seconds", "kmeans_seconds"):
            st[key] = before[key] + max(after[key] - before[key] for _, after in shared)

    def _cluster(self, due: list[int], n: int, net: nn.Module) -> None:
        p = self.params
        rounds = [self._slots[(c, n)].calls // p.interval for c in due]
        cands = [_positions(len(self.bank.class_indices[c]), self.candidate_indices(c, n, r))
                 for c, r in zip(due, rounds)]
        device = next(net.parameters()).device
        t0 = _clock(device)
        feats = embed_candidates(self.bank, net, [self.bank.class_indices[c][pos] for c, pos in zip(due, cands)],
                                 self.precision)
        t1 = _clock(device)
        pools = [self.pool_indices(c, n, r, len(f)) for c, r, f in zip(due, rounds, feats)]
        train = [f if s is None else f[s.to(f.device)] for f, s in zip(feats, pools)]
        seeds = [self.kmeans_seed(c, n, r) for c, r in zip(due, rounds)]
        picks, backend, iters = select_nearest(feats, train, n // p.query_k, p.query_k, seeds, p)
        t2 = _clock(device)
        for c, pos, pick in zip(due, cands, picks):
            chosen = self.bank.class_indices[c][pos[pick]]
            self._slots[(c, n)].indices = chosen
            self.stats["duplicates"] += len(chosen) - len(torch.unique(chosen))
        st = self.stats
        st["reclusterings"] += len(due)
        st["subsampled"] = st["subsampled"] or any(
            len(t) < len(self.bank.class_indices[c]) for c, t in zip(due, train))
        st["candidates_per_class"] = max(st["candidates_per_class"], *(len(f) for f in feats))
        st["pool_size"] = max(st["pool_size"], *(len(t) for t in train))
        st["kmeans_backend"] = backend
        st["kmeans_iterations"] += sum(iters)
        st["embed_seconds"] += t1 - t0
        st["kmeans_seconds"] += t2 - t1

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        slots = [{"c": c, "n": n, "calls": s.calls, "indices": None if s.indices is None else s.indices.clone()}
                 for (c, n), s in sorted(self._slots.items())]
        return {**super().state_dict(), "base_seed": self.base_seed, "slots": slots, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.base_seed = int(state["base_seed"])
        self._slots = {(int(s["c"]), int(s["n"])): _Slot(int(s["calls"]), s["indices"]) for s in state["slots"]}
        self.stats = {**self.stats, **state["stats"]}  # keys added since that checkpoint start at 0

    def info(self) -> dict[str, Any]:
        """Written to result rows as ``sampler_<key>``: re-clusterings (class clusterings run),
        subsampled (whether any clustering used fewer than the whole class), candidates_per_class
        (most candidates embedded for one class), pool_size (most samples clustered for one
        class), duplicates (repeated picks), the k-means backend that ran, kmeans_iterations
        (Lloyd iterations, all clusterings), and the seconds spent embedding and in k-means with
        the nearest-sample search (whole run, resumes included)."""
        out = dict(self.stats)
        out["embed_seconds"] = round(out["embed_seconds"], 3)
        out["kmeans_seconds"] = round(out["kmeans_seconds"], 3)
        return out

    def seconds(self) -> float:
        """Seconds spent choosing real samples: embedding plus k-means (whole run)."""
        return float(self.stats["embed_seconds"] + self.stats["kmeans_seconds"])


# ----------------------------------------------------------------------------------------------
# shared by the sampler and init: kmeans


def embed_candidates(bank: ClassBank, net: nn.Module, groups: Sequence[torch.Tensor], precision: str = "fp32",
                     chunk: int = EMBED_CHUNK) -> list[torch.Tensor]:
    """``embed()`` features ``(len(g), d)`` of the images at each group of dataset indices, in
    no-grad chunks of ``chunk`` images of one group (so a group's features never depend on the
    others: batching classes cannot change a selection) at ``precision``, on the net's device,
    with every module in eval mode (restored afterwards)."""
    device = next(net.parameters()).device
    out = []
    with eval_mode(net):  # images are normalised chunk by chunk: memory stays one chunk's
        for idx in groups:
            parts = [embed_nograd(net, bank.images(idx[s : s + chunk]).to(device), chunk, precision)
                     for s in range(0, len(idx), chunk)]
            out.append(torch.cat(parts))
    return out


def select_nearest(feats: list[torch.Tensor], train: list[torch.Tensor], k: int, query_k: int,
                   seeds: list[int], params: DreamParams) -> tuple[list[torch.Tensor], str, list[int]]:
    """One batched k-means (k centroids per problem, fitted on ``train[i]``, no final assignment)
    and, per centroid, the ``query_k`` nearest rows of ``feats[i]``: CPU int64 positions
    ``(k * query_k,)``, centroid by centroid, nearest first; the backend that ran; the Lloyd
    iterations of each problem."""
    results = kmeans_batched(train, k, seed=seeds, niter=params.kmeans_iters, backend=params.kmeans_backend,
                             init=params.kmeans_init, tol=params.kmeans_tol, assign=False)
    picks = [nearest(f, r.centroids, query_k).reshape(-1).cpu() for f, r in zip(feats, results)]
    return picks, results[0].backend, [r.n_iter for r in results]


def _subset(size: int, limit: int | None, gen: torch.Generator) -> torch.Tensor | None:
    """A sorted seeded subset of ``limit`` of ``range(size)``, or None when ``limit`` keeps all."""
    if limit is None or limit >= size:
        return None
    return torch.randperm(size, generator=gen)[:limit].sort().values


def _positions(size: int, subset: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(size) if subset is None else subset


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work has finished (honest GPU timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def kmeans_init_indices(bank: ClassBank, cfg: Any, device: torch.device) -> torch.Tensor:
    """``init: kmeans``: per class, the ``cfg.ipc`` samples nearest the k-means centroids
    (k = ipc) of a seeded fresh ``cfg.net``'s ``embed()`` features; dataset indices, class-major.

    The k-means and candidate settings are the run's ``sampler: dream`` parameters when it uses
    that sampler, else DREAM's defaults (``candidates``: a seeded subset of each class, null: the
    whole class as in the official code). Unlike the sampler (and the official code), a sample
    nearest two centroids is taken once: the later centroid takes its nearest sample not yet
    taken, since two identical synthetic images would stay identical under siamese augmentation.
    """
    params = from_dict(DreamParams, cfg.sampler_params, where="sampler dream parameters") \
        if cfg.sampler == "dream" else DreamParams()
    net = fresh_net(cfg.net, bank.info, cfg.seed, "init-kmeans", device)
    classes = list(range(bank.info.num_classes))
    limit = None if params.candidates is None else max(params.candidates, cfg.ipc)
    cands = [_positions(len(bank.class_indices[c]), _subset(len(bank.class_indices[c]), limit,
                                                           generator(cfg.seed, f"init-kmeans-candidates:c{c}")))
             for c in classes]
    feats = embed_candidates(bank, net, [bank.class_indices[c][pos] for c, pos in zip(classes, cands)],
                             cfg.precision)
    train = []
    for c, f in zip(classes, feats):
        pool = None if params.kmeans_pool is None else max(params.kmeans_pool, cfg.ipc)
        sub = _subset(len(f), pool, generator(cfg.seed, f"init-kmeans-pool:c{c}"))
        train.append(f if sub is None else f[sub.to(f.device)])
    seeds = [derive_seed(cfg.seed, f"init-kmeans:c{c}") for c in classes]
    picks, _, _ = select_nearest(feats, train, cfg.ipc, cfg.ipc, seeds, params)
    parts = [bank.class_indices[c][pos[_distinct(pick.view(cfg.ipc, cfg.ipc))]]
             for c, pos, pick in zip(classes, cands, picks)]
    return torch.cat(parts)


def _distinct(cand: torch.Tensor) -> torch.Tensor:
    """Centroid by centroid, its nearest candidate not taken by an earlier centroid (``cand`` is
    ``(k, k)``, nearest first, so one is always left)."""
    taken: list[int] = []
    for row in cand.tolist():
        taken.append(next(i for i in row if i not in taken))
    return torch.tensor(taken, dtype=torch.int64)


__all__ = ["DreamSampler", "kmeans_init_indices", "embed_candidates", "select_nearest", "EMBED_CHUNK"]
