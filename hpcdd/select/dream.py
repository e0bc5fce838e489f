"""DREAM (Liu et al., ICCV 2023, "Efficient Dataset Distillation by Representative Matching")
as a sampler every matching method accepts by config alone (``sampler: dream``).

Instead of a random real batch, each class is clustered into k = ``n`` (the real batch size)
groups on the matching net's ``embed()`` features, and the real sample nearest each centroid is
matched against. A class is re-clustered every ``interval`` calls; in between the cached
selection is returned. Parameters: :class:`hpcdd.specs.samplers.DreamParams`.

What runs, per call of ``batch_indices(classes, n, net)``:

* The classes that are due (never clustered for this ``n``, or ``interval`` calls since their
  last clustering) are embedded in one pass (every image of each such class, through
  ``embed_nograd`` in chunks) and clustered in ONE :func:`~hpcdd.select.kmeans.kmeans_batched`
  call; the others return their cached selection. Each ``(class, n)`` pair keeps its own call
  counter, so a method that asks for two batch sizes (e.g. a BatchNorm warm-up batch) does not
  reset the other's schedule.
* **Eval mode while embedding.** The net's modules are switched to ``eval()`` for the pass and
  restored afterwards: for BatchNorm nets this uses the running statistics instead of updating
  them (no side effect on the matching net, and chunking cannot change the features); for
  GroupNorm/InstanceNorm ConvNets (the default) modes change nothing. The official code embeds
  in whatever mode the IDC model is in.
* **k-means**: seeded greedy k-means++ and ``kmeans_iters`` Lloyd iterations by default (the
  choice ``hpcdd.select.kmeans`` measured; the official code uses ``fast_pytorch_kmeans`` with a
  random init and up to 100 iterations, ``kmeans_init: random`` is available). ``kmeans_pool``
  clusters a seeded subsample of each class; the representatives are still searched among every
  sample of the class.
* **Representatives**: per centroid, the ``query_k`` nearest samples of the class (nearest
  first, centroid by centroid; ``query_k`` = 1 is DREAM, > 1 is DREAM+'s ``query_match`` with
  ``n // query_k`` centroids). Like the official code, a sample nearest two centroids is kept
  twice (``info()['duplicates']`` counts such repeats).
* **Refused** (one-line ``ConfigError`` at the first call, see
  :func:`hpcdd.specs.samplers.check_dream`): ``n`` not a multiple of ``query_k``, a pool smaller
  than the centroids, ``n`` larger than a class (k-means cannot place more centroids than
  samples; use ``sampler: random``, which returns the whole class), and a call without a net.
* **Seeds.** One base seed is drawn from ``self.generator`` (the run seed's sampler generator);
  the k-means seed and the pool subsample of class ``c`` at its ``r``-th clustering for batch
  size ``n`` derive from it and ``(c, n, r)`` only. Batching classes together or apart, and
  resuming, therefore cannot change a selection. ``state_dict`` holds the cached selections,
  counters, statistics and generator state.

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
"""Images per no-grad forward chunk while embedding a class (eval mode: chunking is exact)."""


@dataclass
class _Slot:
    """The schedule and cached selection of one (class, batch size)."""

    calls: int = 0
    """Calls served so far; a clustering runs when ``calls % interval == 0``."""
    indices: torch.Tensor | None = None
    """Dataset indices of the current selection (CPU int64)."""


class DreamSampler(Sampler):
    """Declared in :mod:`hpcdd.specs.samplers` (parameters: ``DreamParams``)."""

    def __init__(self, bank: ClassBank, seed: int, params: DreamParams | None = None) -> None:
        super().__init__(bank, seed, params if params is not None else DreamParams())
        self.base_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._checked: set[int] = set()
        self.stats: dict[str, Any] = {
            "reclusterings": 0, "subsampled": False, "pool_size": 0, "duplicates": 0,
            "kmeans_backend": "", "embed_seconds": 0.0, "kmeans_seconds": 0.0,
        }

    # -- seeds --------------------------------------------------------------------------------
    def kmeans_seed(self, c: int, n: int, r: int) -> int:
        """The k-means seed of class ``c``'s ``r``-th clustering (0-based) for batch size ``n``."""
        return derive_seed(self.base_seed, f"dream-kmeans:c{c}:n{n}:r{r}")

    def pool_indices(self, c: int, n: int, r: int) -> torch.Tensor | None:
        """Positions (within class ``c``) of the samples clustered at that clustering, or None
        when the whole class is clustered (no ``kmeans_pool``, or a class no larger than it)."""
        size, pool = len(self.bank.class_indices[c]), self.params.kmeans_pool
        if pool is None or pool >= size:
            return None
        g = generator(self.base_seed, f"dream-pool:c{c}:n{n}:r{r}")
        return torch.randperm(size, generator=g)[:pool].sort().values

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
        p = self.params
        rounds = [self._slots[(c, n)].calls // p.interval for c in due]
        device = next(net.parameters()).device
        t0 = _clock(device)
        feats = embed_classes(self.bank, net, due)
        t1 = _clock(device)
        pools = [self.pool_indices(c, n, r) for c, r in zip(due, rounds)]
        train = [f if s is None else f[s.to(f.device)] for f, s in zip(feats, pools)]
        seeds = [self.kmeans_seed(c, n, r) for c, r in zip(due, rounds)]
        picks, backend = select_nearest(feats, train, n // p.query_k, p.query_k, seeds, p)
        t2 = _clock(device)
        for c, pick in zip(due, picks):
            chosen = self.bank.class_indices[c][pick]
            self._slots[(c, n)].indices = chosen
            self.stats["duplicates"] += len(chosen) - len(torch.unique(chosen))
        st = self.stats
        st["reclusterings"] += len(due)
        st["subsampled"] = st["subsampled"] or any(s is not None for s in pools)
        st["pool_size"] = max(st["pool_size"], *(len(t) for t in train))
        st["kmeans_backend"] = backend
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
        self.stats = dict(state["stats"])

    def info(self) -> dict[str, Any]:
        """Written to result rows as ``sampler_<key>``: re-clusterings (class clusterings run),
        subsampled (whether any clustering used a ``kmeans_pool`` subsample), pool_size (most
        samples clustered for one class), duplicates (repeated picks), the k-means backend that
        ran, and the seconds spent embedding and clustering (whole run, resumes included)."""
        out = dict(self.stats)
        out["embed_seconds"] = round(out["embed_seconds"], 3)
        out["kmeans_seconds"] = round(out["kmeans_seconds"], 3)
        return out


# ----------------------------------------------------------------------------------------------
# shared by the sampler and init: kmeans


def embed_classes(bank: ClassBank, net: nn.Module, classes: Sequence[int],
                  chunk: int = EMBED_CHUNK) -> list[torch.Tensor]:
    """``embed()`` features ``(size_c, d)`` of every image of each class, on the net's device,
    with every module in eval mode (restored afterwards)."""
    device = next(net.parameters()).device
    with eval_mode(net):
        return [embed_nograd(net, bank.images(bank.class_indices[c]).to(device), chunk) for c in classes]


def select_nearest(feats: list[torch.Tensor], train: list[torch.Tensor], k: int, query_k: int,
                   seeds: list[int], params: DreamParams) -> tuple[list[torch.Tensor], str]:
    """One batched k-means (k centroids per problem, fitted on ``train[i]``) and, per centroid,
    the ``query_k`` nearest rows of ``feats[i]``: CPU int64 positions ``(k * query_k,)``, centroid
    by centroid, nearest first; and the backend that ran."""
    results = kmeans_batched(train, k, seed=seeds, niter=params.kmeans_iters,
                             backend=params.kmeans_backend, init=params.kmeans_init)
    picks = [nearest(f, r.centroids, query_k).reshape(-1).cpu() for f, r in zip(feats, results)]
    return picks, results[0].backend


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work has finished (honest GPU timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def kmeans_init_indices(bank: ClassBank, cfg: Any, device: torch.device) -> torch.Tensor:
    """``init: kmeans``: per class, the ``cfg.ipc`` samples nearest the k-means centroids
    (k = ipc) of a seeded fresh ``cfg.net``'s ``embed()`` features; dataset indices, class-major.

    The k-means settings are the run's ``sampler: dream`` parameters when it uses that sampler,
    else DREAM's defaults. Unlike the sampler (and the official code), a sample nearest two
    centroids is taken once: the later centroid takes its nearest sample not yet taken, since
    two identical synthetic images would stay identical under siamese augmentation.
    """
    params = from_dict(DreamParams, cfg.sampler_params, where="sampler dream parameters") \
        if cfg.sampler == "dream" else DreamParams()
    net = fresh_net(cfg.net, bank.info, cfg.seed, "init-kmeans", device)
    classes = list(range(bank.info.num_classes))
    feats = embed_classes(bank, net, classes)
    train = []
    for c, f in zip(classes, feats):
        pool = params.kmeans_pool
        if pool is not None and max(pool, cfg.ipc) < len(f):
            g = generator(cfg.seed, f"init-kmeans-pool:c{c}")
            f = f[torch.randperm(len(f), generator=g)[: max(pool, cfg.ipc)].sort().values.to(f.device)]
        train.append(f)
    seeds = [derive_seed(cfg.seed, f"init-kmeans:c{c}") for c in classes]
    cands, _ = select_nearest(feats, train, cfg.ipc, cfg.ipc, seeds, params)
    parts = [bank.class_indices[c][_distinct(cand.view(cfg.ipc, cfg.ipc))] for c, cand in zip(classes, cands)]
    return torch.cat(parts)


def _distinct(cand: torch.Tensor) -> torch.Tensor:
    """Centroid by centroid, its nearest candidate not taken by an earlier centroid (``cand`` is
    ``(k, k)``, nearest first, so one is always left)."""
    taken: list[int] = []
    for row in cand.tolist():
        taken.append(next(i for i in row if i not in taken))
    return torch.tensor(taken, dtype=torch.int64)


__all__ = ["DreamSampler", "kmeans_init_indices", "embed_classes", "select_nearest", "EMBED_CHUNK"]
