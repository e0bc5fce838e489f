"""Samplers: how a matching method draws its real images each step."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from hpcdd.config import check_config
from hpcdd.errors import ConfigError
from hpcdd.specs.base import SamplerSpec, register_sampler

KMEANS_BACKENDS = ("auto", "faiss", "torch")
"""``hpcdd.select.kmeans.BACKENDS`` (repeated here: specs import no torch; a test keeps them equal)."""
KMEANS_INITS = ("k-means++", "random")
"""``hpcdd.select.kmeans.INITS``."""


@dataclass(frozen=True)
class DreamParams:
    """DREAM (Liu et al., ICCV 2023): match against the real samples nearest per-class k-means
    centroids of the matching net's embeddings, k = batch_real. Defaults: the official code's
    interval, top-1, random init, tolerance and iteration cap, and a seeded subset of 500
    candidates per class (the official code embeds the whole class: ``candidates: null``). With
    them DREAM-DM costs 1.2x random-DM per iteration on Fashion-MNIST ipc 10 (1000 candidates:
    1.4x; ``bench/bench_dream.py``); k-means++ costs 6-9x random init's k-means time
    (``bench/KMEANS.md``)."""

    interval: int = 10
    """Re-cluster a class every this many sampler calls (matching steps), reusing the cached
    selection in between (DREAM: 10; DC/DSA call once per outer step, so interval 1 at ipc 10
    clusters every outer step, 9 of 10 on the net partly trained by the inner loop, as the
    official code clusters 10 times per net)."""
    query_k: int = 1
    """DREAM+: batch_real/query_k centroids and the query_k samples nearest each (1: plain
    DREAM); must divide batch_real."""
    candidates: int | None = 500
    """Embed a seeded subset of at most this many images per class at each clustering and pick
    the representatives among them (a fresh subset each time; null: the whole class, as the
    official code); must hold the batch_real/query_k centroids."""
    kmeans_pool: int | None = None
    """Fit the k-means on a seeded subsample of at most this many of the candidates (the
    representatives are still searched among every candidate); null: all candidates."""
    kmeans_iters: int = 100
    """Iteration cap of each clustering's Lloyd iterations, which stop early at a fixed point or
    at kmeans_tol (official: 100)."""
    kmeans_tol: float | None = 1e-4
    """Stop a clustering once its centroids' summed squared move in one iteration is <= this
    (official fast_pytorch_kmeans: 1e-4); null: only at a fixed point or the cap."""
    kmeans_backend: str = "auto"
    """k-means backend: auto (FAISS when installed, torch on a GPU without FAISS-GPU), faiss or
    torch."""
    kmeans_init: str = "random"
    """k-means init: random (k distinct candidates, the official code's) or k-means++ (seeded
    greedy, lower inertia, 6-9x the k-means time; bench/KMEANS.md)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.interval < 1:
            raise ConfigError(f"interval must be >= 1 (re-cluster every interval steps), got {self.interval}")
        if self.query_k < 1:
            raise ConfigError(f"query_k must be >= 1, got {self.query_k}")
        if self.candidates is not None and self.candidates < 1:
            raise ConfigError(f"candidates must be >= 1 or null (the whole class), got {self.candidates}")
        if self.kmeans_pool is not None and self.kmeans_pool < 1:
            raise ConfigError(f"kmeans_pool must be >= 1 or null (all candidates), got {self.kmeans_pool}")
        if self.kmeans_iters < 1:
            raise ConfigError(f"kmeans_iters must be >= 1 (the iteration cap), got {self.kmeans_iters}")
        if self.kmeans_tol is not None and not self.kmeans_tol > 0:
            raise ConfigError(f"kmeans_tol must be > 0 or null (stop at a fixed point), got {self.kmeans_tol}")
        if self.kmeans_backend not in KMEANS_BACKENDS:
            raise ConfigError(f"kmeans_backend must be one of {', '.join(KMEANS_BACKENDS)}, "
                              f"got {self.kmeans_backend!r}")
        if self.kmeans_init not in KMEANS_INITS:
            raise ConfigError(f"kmeans_init must be one of {', '.join(KMEANS_INITS)}, got {self.kmeans_init!r}")


def check_dream(params: DreamParams, batch_real: int, smallest_class: int | None = None) -> None:
    """Refuse a real batch DREAM cannot serve (``ConfigError``, one line): ``query_k`` must divide
    it, the candidates and the k-means pool must hold its centroids, no class may be smaller than
    it, and ``kmeans_backend: faiss`` needs the faiss module.

    ``run.py`` calls this before a run writes any file (and the sampler at its first use); it is
    torch-free (the faiss module is looked up, not imported).
    """
    if batch_real % params.query_k:
        raise ConfigError(f"sampler dream: batch_real {batch_real} is not a multiple of query_k "
                          f"{params.query_k} (DREAM+ takes batch_real/query_k centroids and the "
                          "query_k samples nearest each)")
    if smallest_class is not None and batch_real > smallest_class:
        raise ConfigError(f"sampler dream: batch_real {batch_real} exceeds the smallest class "
                          f"({smallest_class} training images); DREAM picks batch_real samples per "
                          "class from k-means centroids (lower batch_real, or use sampler random)")
    k = batch_real // params.query_k
    for name in ("candidates", "kmeans_pool"):
        value = getattr(params, name)
        if value is not None and value < k:
            raise ConfigError(f"sampler dream: {name} {value} is smaller than the {k} centroids "
                              "(batch_real/query_k) it must cluster into")
    if params.kmeans_backend == "faiss" and importlib.util.find_spec("faiss") is None:
        raise ConfigError("sampler dream: kmeans_backend faiss needs the faiss module: pip install "
                          "'hpcdd[faiss]' (or 'hpcdd[gpu]' on CUDA 12), or use kmeans_backend auto or torch")


register_sampler(SamplerSpec(
    name="random", impl="hpcdd.select.samplers:RandomSampler",
    summary="uniform sampling without replacement inside the class (DC, DSA, DM)",
))
register_sampler(SamplerSpec(
    name="dream", impl="hpcdd.select.dream:DreamSampler", params=DreamParams, check=check_dream,
    summary="DREAM: the real samples nearest per-class k-means centroids of the matching net's "
            "embeddings, re-clustered every interval steps",
))
