"""Samplers: how a matching method draws its real images each step."""

from __future__ import annotations

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
    interval and top-1, and the k-means settings ``hpcdd.select.kmeans`` measured (greedy
    k-means++ and 20 Lloyd iterations reach scikit-learn's inertia within 0.3%)."""

    interval: int = 10
    """Re-cluster a class every this many sampler calls (matching steps), reusing the cached
    selection in between (DREAM: 10)."""
    query_k: int = 1
    """DREAM+: batch_real/query_k centroids and the query_k samples nearest each (1: plain
    DREAM); must divide batch_real."""
    kmeans_pool: int | None = None
    """Cluster a seeded subsample of at most this many samples per class (every sample of the
    class stays a candidate); null: the whole class."""
    kmeans_iters: int = 20
    """Lloyd iterations per clustering, stopping early at a fixed point (official: up to 100
    with a tolerance)."""
    kmeans_backend: str = "auto"
    """k-means backend: auto (FAISS when installed, torch on a GPU without FAISS-GPU), faiss or
    torch."""
    kmeans_init: str = "k-means++"
    """k-means init: k-means++ (seeded greedy, near scikit-learn's inertia) or random (the
    official code's; faster)."""

    def __post_init__(self) -> None:
        check_config(self)
        if self.interval < 1:
            raise ConfigError(f"interval must be >= 1 (re-cluster every interval steps), got {self.interval}")
        if self.query_k < 1:
            raise ConfigError(f"query_k must be >= 1, got {self.query_k}")
        if self.kmeans_pool is not None and self.kmeans_pool < 1:
            raise ConfigError(f"kmeans_pool must be >= 1 or null (the whole class), got {self.kmeans_pool}")
        if self.kmeans_iters < 1:
            raise ConfigError(f"kmeans_iters must be >= 1, got {self.kmeans_iters}")
        if self.kmeans_backend not in KMEANS_BACKENDS:
            raise ConfigError(f"kmeans_backend must be one of {', '.join(KMEANS_BACKENDS)}, "
                              f"got {self.kmeans_backend!r}")
        if self.kmeans_init not in KMEANS_INITS:
            raise ConfigError(f"kmeans_init must be one of {', '.join(KMEANS_INITS)}, got {self.kmeans_init!r}")


def check_dream(params: DreamParams, batch_real: int, smallest_class: int | None = None) -> None:
    """Refuse a real batch DREAM cannot serve (``ConfigError``, one line): ``query_k`` must divide
    it, the k-means pool must hold its centroids, and no class may be smaller than it.

    The sampler calls this at its first use; it is torch-free so that resolution (and the class
    size check before a run writes anything) can call it too.
    """
    if batch_real % params.query_k:
        raise ConfigError(f"sampler dream: batch_real {batch_real} is not a multiple of query_k "
                          f"{params.query_k} (DREAM+ takes batch_real/query_k centroids and the "
                          "query_k samples nearest each)")
    k = batch_real // params.query_k
    if params.kmeans_pool is not None and params.kmeans_pool < k:
        raise ConfigError(f"sampler dream: kmeans_pool {params.kmeans_pool} is smaller than the {k} "
                          "centroids (batch_real/query_k) it must cluster into")
    if smallest_class is not None and batch_real > smallest_class:
        raise ConfigError(f"sampler dream: batch_real {batch_real} exceeds the smallest class "
                          f"({smallest_class} training images); DREAM picks batch_real samples per "
                          "class from k-means centroids (lower batch_real, or use sampler random)")


register_sampler(SamplerSpec(
    name="random", impl="hpcdd.select.samplers:RandomSampler",
    summary="uniform sampling without replacement inside the class (DC, DSA, DM)",
))
register_sampler(SamplerSpec(
    name="dream", impl="hpcdd.select.dream:DreamSampler", params=DreamParams, check=check_dream,
    summary="DREAM: the real samples nearest per-class k-means centroids of the matching net's "
            "embeddings, re-clustered every interval steps",
))
