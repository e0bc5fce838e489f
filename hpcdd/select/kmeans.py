"""k-means for the DREAM sampler: FAISS (GPU when present, else CPU) or a pure-torch Lloyd's.

``kmeans(x, k, seed=...)`` clusters one ``(n, d)`` problem; ``kmeans_batched(xs, k, seed=...)``
clusters many small ones (every class of a dataset) in one call: the torch backend runs one
``(B, n, k)`` distance computation per Lloyd iteration for the whole batch, the FAISS backend
loops over the problems with one shared index. ``nearest(x, centroids)`` returns the real
samples nearest each centroid (what DREAM keeps).

Choices (measured with ``bench/bench_kmeans.py`` on 60000 x 2048 Fashion-MNIST ConvNet3
features, k=256, against scikit-learn ``KMeans(n_init=1, init="k-means++")``; see
``bench/KMEANS.md``):

- **Init: seeded greedy k-means++ (the API default), or ``init="random"``** (k distinct
  samples: the official DREAM code's, and DREAM's default here, 6-9x cheaper on its per-class
  candidate problems, see ``bench/KMEANS.md``). Greedy k-means++ draws ``n_local_trials``
  candidates per centre (default ``2 + int(log k)``, scikit-learn's rule) in proportion to the
  squared distance to the chosen centres and keeps the one that lowers the potential most, in
  torch on at most ``init_points_per_centroid * k`` points (a seeded subset above); either init
  is handed to FAISS through ``faiss.Clustering.centroids`` (every FAISS release), so the
  backends start identically. Inertia / scikit-learn converged, after <= 20 iterations, per
  class (6000 x 2048): FAISS's default random init 1.023, plain k-means++ 1.006, greedy 0.998.
- **Iterations: at most ``niter`` (``DEFAULT_NITER`` = 20)**, stopping early at a fixed point
  (torch: no assignment changed; FAISS 1.15 also once its objective stops improving) or, with
  ``tol``, once the centroids' summed squared move is <= ``tol`` (``fast_pytorch_kmeans``' rule;
  FAISS then runs one iteration per ``train`` call). Greedy k-means++ is within 0.2% of its
  40-iteration value after 20; scikit-learn needs ~20 per class and 81 on the whole set.
- **Training points.** FAISS silently trains on at most ``max_points_per_centroid * k`` points
  (256 * k by default). Here every point trains up to ``max_points_per_centroid * k`` with
  ``max_points_per_centroid=4096`` (1M points at k=256); above that cap a seeded subset (drawn
  from the run's generator, the same for both backends) trains, and FAISS is given a
  ``max_points_per_centroid`` that never subsamples again. ``min_points_per_centroid`` is 1, so
  FAISS does not warn about small per-class problems (n >= k is checked here instead).
- **Result.** ``inertia`` is the sum of squared distances of ALL input points to their nearest
  final centroid, computed in float64 by the same torch code for every backend, so backends
  (and scikit-learn, in the bench) are comparable. ``assign`` comes from that same pass;
  ``assign=False`` skips both (DREAM needs the centroids only).
- **Seeds.** Every draw comes from ``hpcdd.seeding.generator(seed, "kmeans")`` (problem ``i`` of a
  batch uses ``problem_seed(seed, i)`` unless explicit seeds are given); FAISS's own seed is
  ``derive_seed(seed, "kmeans:faiss") mod 2**31``. Seeded CPU runs are bit-identical; CUDA runs
  (``index_add_`` atomics) are not bitwise reproducible.
- **GPU.** With a GPU build of FAISS and ``x`` on a CUDA device, FAISS clusters on that one
  device (``GpuIndexFlatConfig.device``), never on all visible GPUs; else CPU FAISS (a warning if
  the GPU resources fail to start), and ``backend="auto"`` picks torch instead, which stays on
  the GPU and batches all problems into one ``(B, n, k)`` distance per iteration: the fast path
  for DREAM's many small fits on a GPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from hpcdd.errors import ConfigError
from hpcdd.seeding import derive_seed, generator

DEFAULT_NITER = 20
BACKENDS = ("auto", "faiss", "torch")  # auto: FAISS if importable (and GPU-capable for CUDA input), else torch
INITS = ("k-means++", "random")
_CHUNK_ELEMS = 1 << 24  # at most this many float32 distances (64 MiB) per block


@dataclass(frozen=True)
class KMeansResult:
    """The outcome of one k-means fit."""

    centroids: torch.Tensor
    """``(k, d)`` float32 centroids, on the input's device."""
    assign: torch.Tensor | None
    """``(n,)`` int64 index of each input point's nearest centroid (None with ``assign=False``)."""
    inertia: float | None
    """Sum of squared distances of all points to their nearest centroid (float64; None with
    ``assign=False``)."""
    backend: str
    """What ran: ``"faiss-cpu"``, ``"faiss-gpu"`` or ``"torch"``."""
    n_iter: int
    """Lloyd iterations run (<= ``niter``: both backends stop early at a fixed point, or once the
    centroids move less than ``tol``)."""


def problem_seed(seed: int, i: int) -> int:
    """The seed problem ``i`` of ``kmeans_batched(..., seed=seed)`` uses."""
    return derive_seed(seed, f"kmeans:problem{i}")


def kmeans(
    x: torch.Tensor | np.ndarray,
    k: int,
    *,
    seed: int,
    niter: int = DEFAULT_NITER,
    backend: str = "auto",
    init: str = "k-means++",
    n_local_trials: int | None = None,
    max_points_per_centroid: int = 4096,
    init_points_per_centroid: int = 64,
    tol: float | None = None,
    assign: bool = True,
) -> KMeansResult:
    """Cluster ``x`` ``(n, d)`` into ``k`` groups; see the module docstring for the choices.

    Raises ``ConfigError`` (one line) for k < 1, n < k, NaN/Inf input, an unknown backend or
    init, niter < 1, tol <= 0, or ``backend="faiss"`` without the faiss module.
    """
    x = _as_float_tensor(x, 2)
    return kmeans_batched([x], k, seed=[seed], niter=niter, backend=backend, init=init,
                          n_local_trials=n_local_trials, max_points_per_centroid=max_points_per_centroid,
                          init_points_per_centroid=init_points_per_centroid, tol=tol, assign=assign)[0]


def kmeans_batched(
    xs: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    k: int,
    *,
    seed: int | Sequence[int],
    niter: int = DEFAULT_NITER,
    backend: str = "auto",
    init: str = "k-means++",
    n_local_trials: int | None = None,
    max_points_per_centroid: int = 4096,
    init_points_per_centroid: int = 64,
    lengths: Sequence[int] | None = None,
    tol: float | None = None,
    assign: bool = True,
) -> list[KMeansResult]:
    """Cluster many problems in one call: a list of ``(n_i, d)`` or a padded ``(B, n, d)`` tensor.

    ``lengths`` gives each padded problem's valid rows (default: all). Problem ``i`` is seeded
    with ``problem_seed(seed, i)``, or with ``seed[i]`` when a sequence is given, so result ``i``
    equals ``kmeans(xs[i], k, seed=that seed)`` (up to float rounding of the batched matmuls).

    ``tol``: a problem also stops once the sum over its centroids of the squared distance each
    moved in one iteration is <= ``tol`` (the rule of ``fast_pytorch_kmeans``, which the official
    DREAM code uses with 1e-4 and at most 100 iterations); None: only at a fixed point.
    ``assign=False`` skips the final assignment of every point and the inertia (``assign`` and
    ``inertia`` are None): all a caller that only wants the centroids, or the samples nearest
    them (:func:`nearest`), needs.
    """
    xb, lens = _pad(xs, lengths)
    seeds = [problem_seed(seed, i) for i in range(len(lens))] if isinstance(seed, int) else list(seed)
    _validate(xb, lens, k, niter, backend, init, seeds)
    if tol is not None and not tol > 0:
        raise ConfigError(f"k-means tolerance must be > 0 (or None: stop at a fixed point), got {tol}")
    if min(max_points_per_centroid, init_points_per_centroid) < 1:
        raise ConfigError("max_points_per_centroid and init_points_per_centroid must be >= 1")
    name = _resolve_backend(backend, xb.device)
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(k))
    gens = [generator(s, "kmeans") for s in seeds]
    train_lens = [min(n, max_points_per_centroid * k) for n in lens]
    xt = _subsample(xb, lens, train_lens, gens)
    init_lens = [min(n, init_points_per_centroid * k) for n in train_lens]
    c0 = _init(_subsample(xt, train_lens, init_lens, gens), init_lens, k, gens, init, trials)
    if name == "torch":
        cents, iters = _lloyd(xt, train_lens, c0, niter, tol)
        backends = ["torch"] * len(lens)
    else:
        cents, backends, iters = _faiss_fit(xt, train_lens, c0, niter, seeds, tol)
    if not assign:
        return [KMeansResult(cents[i].contiguous(), None, None, backends[i], iters[i]) for i in range(len(lens))]
    labels, inertias = _finish(xb, lens, cents)
    return [
        KMeansResult(cents[i].contiguous(), labels[i, : lens[i]].clone(), inertias[i], backends[i], iters[i])
        for i in range(len(lens))
    ]


def nearest(x: torch.Tensor | np.ndarray, centroids: torch.Tensor, k_nearest: int = 1) -> torch.Tensor:
    """For each centroid, the indices of the ``k_nearest`` samples of ``x`` nearest it.

    Returns ``(k, k_nearest)`` int64, nearest first. Centroids are handled independently, so
    one sample may be picked for two centroids (duplicates are not removed); ties go to an
    arbitrary one of the tied samples.
    """
    x = _as_float_tensor(x, 2)
    c = centroids.to(device=x.device, dtype=torch.float32)
    if not 1 <= k_nearest <= x.shape[0]:
        raise ConfigError(f"k_nearest must be in 1..n={x.shape[0]}, got {k_nearest}")
    best_d = torch.full((c.shape[0], 0), float("inf"), device=x.device)
    best_i = torch.zeros((c.shape[0], 0), dtype=torch.int64, device=x.device)
    step = max(1, _CHUNK_ELEMS // max(1, c.shape[0]))
    for s in range(0, x.shape[0], step):
        d = _sqdist(c[None], x[None, s : s + step])[0]  # (k, m)
        idx = torch.arange(s, s + d.shape[1], device=x.device).expand_as(d)
        vals, pos = torch.cat([best_d, d], 1).topk(min(k_nearest, best_d.shape[1] + d.shape[1]), 1, largest=False)
        best_d, best_i = vals, torch.cat([best_i, idx], 1).gather(1, pos)
    return best_i


def inertia(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor | None = None) -> float:
    """Sum of squared distances of ``x`` to ``centroids[assign]`` in float64, in chunks.

    Without ``assign`` each point goes to its nearest centroid (how ``KMeansResult.inertia`` is
    computed, and how the bench scores scikit-learn's centroids).
    """
    x = _as_float_tensor(x, 2)
    centroids = _as_float_tensor(centroids, 2).to(x.device)
    if assign is None:
        assign = _assign(x[None], centroids[None], _sqnorm(x[None]))[0][0]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = max(1, _CHUNK_ELEMS // max(1, 2 * x.shape[1]))
    for s in range(0, x.shape[0], step):
        diff = x[s : s + step].double() - centroids[assign[s : s + step]].double()
        total += diff.pow(2).sum()
    return float(total)


# --- validation and input handling -------------------------------------------------------


def _as_float_tensor(x: torch.Tensor | np.ndarray, ndim: int) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dim() != ndim:
        raise ConfigError(f"k-means input must be {ndim}-D, got shape {tuple(t.shape)}")
    return t.to(torch.float32).contiguous()


def _pad(xs, lengths: Sequence[int] | None) -> tuple[torch.Tensor, list[int]]:
    """A zero-padded ``(B, n_max, d)`` float32 tensor and each problem's length."""
    if isinstance(xs, (torch.Tensor, np.ndarray)):
        xb = _as_float_tensor(xs, 3)
        lens = [xb.shape[1]] * xb.shape[0] if lengths is None else [int(n) for n in lengths]
        if len(lens) != xb.shape[0] or any(not 0 <= n <= xb.shape[1] for n in lens):
            raise ConfigError(f"lengths {lens} do not fit a padded batch of shape {tuple(xb.shape)}")
        if any(n < xb.shape[1] for n in lens):  # padding rows must be zero (they add nothing)
            valid = torch.arange(xb.shape[1], device=xb.device)[None] < torch.tensor(lens, device=xb.device)[:, None]
            xb = xb * valid[..., None]
        return xb, lens
    items = [_as_float_tensor(x, 2) for x in xs]
    if not items:
        raise ConfigError("kmeans_batched needs at least one problem")
    if len({x.shape[1] for x in items}) != 1:
        raise ConfigError(f"all k-means problems need the same dimension, got {sorted({x.shape[1] for x in items})}")
    lens = [x.shape[0] for x in items]
    if len(items) == 1:
        return items[0][None], lens
    xb = items[0].new_zeros((len(items), max(lens), items[0].shape[1]))
    for i, x in enumerate(items):
        xb[i, : x.shape[0]] = x
    return xb, lens


def _validate(xb: torch.Tensor, lens: list[int], k: int, niter: int, backend: str, init: str, seeds) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k-means needs k >= 1 clusters, got k={k!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown k-means backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if init not in INITS:
        raise ConfigError(f"unknown k-means init {init!r}; choose from {', '.join(INITS)}")
    if niter < 1:
        raise ConfigError(f"k-means needs niter >= 1, got {niter}")
    if len(seeds) != len(lens):
        raise ConfigError(f"got {len(seeds)} seeds for {len(lens)} k-means problems")
    for i, n in enumerate(lens):
        if n < k:
            where = "" if len(lens) == 1 else f" (problem {i})"
            raise ConfigError(f"k-means needs at least k={k} samples, got n={n}{where}")
    if not bool(torch.isfinite(xb).all()):
        raise ConfigError("k-means input contains NaN or Inf values")


def _import_faiss() -> ModuleType | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _resolve_backend(backend: str, device: torch.device) -> str:
    """``faiss`` or ``torch``; ``auto`` keeps CUDA inputs on their GPU unless FAISS can use it."""
    if backend == "torch":
        return "torch"
    faiss = _import_faiss()
    if faiss is None:
        if backend == "faiss":
            raise ConfigError("k-means backend 'faiss' needs the faiss module: pip install 'hpcdd[faiss]' "
                              "(or 'hpcdd[gpu]' on CUDA 12; never both), or use backend='torch'")
        return "torch"
    if backend == "auto" and device.type == "cuda" and _faiss_gpu_device(faiss, device) is None:
        return "torch"  # CPU FAISS would copy to the host and lose to torch on the GPU
    return "faiss"


def _subsample(xb: torch.Tensor, lens: list[int], train_lens: list[int], gens) -> torch.Tensor:
    """Each problem's first ``m`` rows: all its points, or a seeded subset when ``m < n``."""
    if train_lens == lens:
        return xb
    out = xb.new_zeros((xb.shape[0], max(train_lens), xb.shape[2]))
    for i, (n, m) in enumerate(zip(lens, train_lens)):
        idx = torch.randperm(n, generator=gens[i])[:m] if m < n else torch.arange(n)
        out[i, :m] = xb[i, idx.to(xb.device)]
    return out


# --- torch k-means: init, Lloyd's, final assignment -------------------------------------


def _sqnorm(x: torch.Tensor) -> torch.Tensor:
    """Squared norms ``(..., 1)`` of the last dimension (no ``x * x`` temporary)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()


def _sqdist(x: torch.Tensor, c: torch.Tensor, xn: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distances ``(B, m, k)`` between ``x (B, m, d)`` and ``c (B, k, d)`` (clamped >= 0).

    ``xn`` is ``x``'s squared norms ``(B, m, 1)`` when already known.
    """
    xn = _sqnorm(x) if xn is None else xn
    return torch.baddbmm(_sqnorm(c).transpose(1, 2), x, c.transpose(1, 2), alpha=-2.0).add_(xn).clamp_min_(0.0)


def _assign(xb: torch.Tensor, c: torch.Tensor, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid ``(B, n)`` and its squared distance, in row chunks (``xn``: ``_sqnorm(xb)``)."""
    b, n, _ = xb.shape
    cn = _sqnorm(c).transpose(1, 2)
    step = max(1, _CHUNK_ELEMS // max(1, b * c.shape[1]))
    idx, dist = [], []
    for s in range(0, n, step):
        d, i = torch.baddbmm(cn, xb[:, s : s + step], c.transpose(1, 2), alpha=-2.0).min(-1)
        idx.append(i)
        dist.append(d.add_(xn[:, s : s + step, 0]).clamp_min_(0.0))
    return torch.cat(idx, 1), torch.cat(dist, 1)


def _valid(lens: list[int], n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)[None] < torch.tensor(lens, device=device)[:, None]


def _init(xb: torch.Tensor, lens: list[int], k: int, gens, init: str, trials: int) -> torch.Tensor:
    if init == "random":  # k distinct samples per problem
        idx = torch.stack([torch.randperm(n, generator=g)[:k] for n, g in zip(lens, gens)]).to(xb.device)
        return xb.gather(1, idx[..., None].expand(-1, -1, xb.shape[2])).clone()
    return _kmeanspp(xb, lens, k, gens, trials)


def _kmeanspp(xb: torch.Tensor, lens: list[int], k: int, gens, trials: int) -> torch.Tensor:
    """Greedy k-means++ for the whole batch; uniforms are drawn up front per problem (CPU).

    Each new centre samples ``trials`` candidates with probability proportional to the squared
    distance to the nearest chosen centre and keeps the one that lowers the potential most.
    """
    b, n, d = xb.shape
    dev = xb.device
    u = torch.stack([torch.rand(k, trials, generator=g, dtype=torch.float64) for g in gens]).to(dev)
    last = torch.tensor(lens, device=dev)[:, None] - 1
    valid = _valid(lens, n, dev)
    rows = torch.arange(b, device=dev)
    first = (u[:, 0, :1] * (last + 1)).long().clamp_max(last)  # (B, 1) uniform first centre
    cents = xb.new_empty((b, k, d))
    cents[:, 0] = xb[rows, first[:, 0]]
    xn = _sqnorm(xb)
    padded = min(lens) < n  # padding rows must weigh nothing
    closest = _sqdist(xb, cents[:, :1], xn)[..., 0]
    closest = closest * valid if padded else closest
    for j in range(1, k):
        cum = closest.cumsum(1, dtype=torch.float64)
        cand = torch.searchsorted(cum, u[:, j] * cum[:, -1:], right=True).clamp_max(last)  # (B, L)
        cx = xb.gather(1, cand[..., None].expand(-1, -1, d))  # (B, L, d)
        dc = torch.minimum(_sqdist(xb, cx, xn), closest[..., None])  # (B, n, L)
        dc = dc * valid[..., None] if padded else dc
        best = dc.sum(1, dtype=torch.float64).argmin(1)  # (B,)
        cents[:, j] = cx[rows, best]
        closest = dc[rows, :, best]
    return cents


def _lloyd(xb: torch.Tensor, lens: list[int], c: torch.Tensor, niter: int,
           tol: float | None = None) -> tuple[torch.Tensor, list[int]]:
    """Batched Lloyd's iterations and each problem's iteration count. A problem stops (its
    centroids frozen) at a fixed point (no assignment changed) or, with ``tol``, once its
    centroids' summed squared move is <= ``tol``; the loop ends when every problem stopped."""
    b, n, d = xb.shape
    k = c.shape[1]
    valid = _valid(lens, n, xb.device)
    offset = (torch.arange(b, device=xb.device) * k)[:, None]
    weight = valid.to(xb.dtype).reshape(-1)
    xn = _sqnorm(xb)
    active = torch.ones(b, dtype=torch.bool, device=xb.device)
    iters = [niter] * b
    prev = None
    for it in range(niter):
        a, dist = _assign(xb, c, xn)
        if prev is not None:
            active = _stop(active, ((a == prev) | ~valid).all(1), iters, it)
            if not bool(active.any()):
                break
        flat = (a + offset).reshape(-1)
        sums = xb.new_zeros((b * k, d)).index_add_(0, flat, xb.reshape(-1, d))  # padding rows are 0
        counts = xb.new_zeros(b * k).index_add_(0, flat, weight).reshape(b, k)
        new = torch.where(counts[..., None] > 0, sums.reshape(b, k, d) / counts.clamp_min(1)[..., None], c)
        if bool((counts == 0).any()):
            new = _relocate_empty(xb, valid, dist, new, counts)
        moved = (new - c).pow(2).sum((1, 2)) if tol is not None else None
        c = torch.where(active[:, None, None], new, c)
        if moved is not None:
            active = _stop(active, moved <= tol, iters, it + 1)
            if not bool(active.any()):
                break
        prev = a
    return c, iters


def _stop(active: torch.Tensor, done: torch.Tensor, iters: list[int], count: int) -> torch.Tensor:
    """Record ``count`` iterations for the active problems that are ``done``; the rest stay active."""
    for i in torch.nonzero(active & done).flatten().tolist():
        iters[i] = count
    return active & ~done


def _relocate_empty(xb, valid, dist, c, counts) -> torch.Tensor:
    """Move each empty cluster's centre onto one of the points farthest from their centre."""
    c = c.clone()
    far = dist.masked_fill(~valid, -1.0)
    for i in torch.nonzero((counts == 0).any(1)).flatten().tolist():
        empty = torch.nonzero(counts[i] == 0).flatten()
        pts = far[i].topk(len(empty)).indices
        c[i, empty] = xb[i, pts]
    return c


def _finish(xb: torch.Tensor, lens: list[int], cents: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Final assignment of every input point and each problem's float64 inertia."""
    a, _ = _assign(xb, cents, _sqnorm(xb))
    return a, [inertia(xb[i, :n], cents[i], a[i, :n]) for i, n in enumerate(lens)]


# --- FAISS --------------------------------------------------------------------------------


def _faiss_gpu_device(faiss: ModuleType, device: torch.device) -> int | None:
    """The CUDA device index FAISS should cluster on, or None for CPU FAISS."""
    if device.type != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return None
    try:
        if faiss.get_num_gpus() < 1:
            return None
    except (AttributeError, RuntimeError):
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def _faiss_index(faiss: ModuleType, d: int, device: torch.device):
    """One flat L2 index (on the input's GPU when FAISS can, else CPU), its kind, its resources."""
    gpu = _faiss_gpu_device(faiss, device)
    if gpu is not None:
        try:
            res = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = gpu
            return faiss.GpuIndexFlatL2(res, d, cfg), "faiss-gpu", res  # res must outlive the index
        except (AttributeError, RuntimeError) as e:
            warnings.warn(f"FAISS GPU index unavailable ({e}); clustering with CPU FAISS", stacklevel=3)
    return faiss.IndexFlatL2(d), "faiss-cpu", None


def _faiss_fit(xb, lens, c0, niter, seeds, tol=None) -> tuple[torch.Tensor, list[str], list[int]]:
    """FAISS Lloyd's from the given initial centroids, one problem at a time, one shared index.

    With ``tol`` FAISS runs one iteration per ``train`` call, so that the move of the centroids
    can be checked after each (FAISS itself has no tolerance)."""
    faiss = _import_faiss()
    b, _, d = xb.shape
    k = c0.shape[1]
    index, kind, _resources = _faiss_index(faiss, d, xb.device)
    x_np = xb.detach().cpu().numpy()
    c_np = c0.detach().cpu().numpy()
    out = np.empty((b, k, d), dtype=np.float32)
    iters = []
    for i, n in enumerate(lens):
        x = np.ascontiguousarray(x_np[i, :n], dtype=np.float32)
        seed = derive_seed(seeds[i], "kmeans:faiss") % (1 << 31)
        if tol is None:
            out[i], ran = _faiss_train(faiss, index, x, c_np[i], niter, seed)
        else:
            cents, ran = np.ascontiguousarray(c_np[i], dtype=np.float32), 0
            while ran < niter:
                new, _ = _faiss_train(faiss, index, x, cents, 1, derive_seed(seed, f"it{ran}") % (1 << 31))
                ran += 1
                moved = float(np.square(new.astype(np.float64) - cents).sum())
                cents = new
                if moved <= tol:
                    break
            out[i] = cents
        iters.append(ran)
    return torch.from_numpy(out).to(xb.device), [kind] * b, iters


def _faiss_train(faiss: ModuleType, index, x: np.ndarray, c0: np.ndarray, niter: int,
                 seed: int) -> tuple[np.ndarray, int]:
    """``niter`` FAISS Lloyd iterations on ``x`` from ``c0``: the centroids and the iterations run."""
    n, d = x.shape
    k = c0.shape[0]
    cp = faiss.ClusteringParameters()
    cp.niter = niter
    cp.nredo = 1
    cp.seed = seed
    cp.max_points_per_centroid = -(-n // k)  # >= n / k: FAISS never subsamples again
    cp.min_points_per_centroid = 1
    clus = faiss.Clustering(d, k, cp)
    faiss.copy_array_to_vector(np.ascontiguousarray(c0, dtype=np.float32).ravel(), clus.centroids)
    clus.train(x, index)
    return faiss.vector_float_to_array(clus.centroids).reshape(k, d), int(clus.iteration_stats.size())
