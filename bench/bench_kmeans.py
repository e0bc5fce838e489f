"""k-means on Fashion-MNIST ConvNet3 embeddings: FAISS-CPU vs scikit-learn vs hpcdd's torch backend.

Data: the 60000 x 2048 ``embed()`` features of a seeded random ConvNet3 over the whole
Fashion-MNIST train set (cached as .npy under --cache; the first chunk is re-embedded and
compared, so a stale cache is rebuilt).

Problems and rows (every row records its settings):
  full       60000 x 2048, k=256, one fit
  per-class  10 classes x 6000 x 2048, k=256 (what DREAM did before issue 19, one fit per class)
  candidates 10 classes x C x 2048 (C = --candidates, a seeded subset of each class), k = --k-real
             (the real batch, 256): what DREAM runs now, as it runs it (one batched call, no final
             assignment, then the nearest candidate per centroid), for each backend (faiss, torch) and
             init (k-means++ with 20 iterations; random with the official cap 100 and tolerance 1e-4).
             Scored by the share of nearest-sample picks that agree with k-means++ (torch, seed 0),
             next to k-means++ with another seed (how much k-means++ agrees with itself)
Methods:
  sklearn          KMeans(n_init=1, init='k-means++') with its defaults (max_iter=300, tol=1e-4):
                   the quality reference of ``inertia_vs_sklearn`` and ``speedup_vs_sklearn``
  sklearn-niter    the same with max_iter=--niter, tol=0 (same iteration count as the others)
  faiss-native     faiss.Kmeans(d, k, niter, seed) out of the box (random init)
  faiss            hpcdd kmeans(backend='faiss'): seeded greedy k-means++ init, then FAISS Lloyd's
  torch            hpcdd kmeans(backend='torch'); on per-class also 'torch-loop' (one call per class)
Inertia is always ``hpcdd.select.kmeans.inertia(x, centroids)`` (float64, nearest centroid, all
points), so every method is scored the same way. --sklearn-classes limits the slow sklearn rows
to the first N classes; per-class ratios are computed over the classes both methods ran, and
per-class speedups scale sklearn's time per class to the row's number of classes.
On a shared 2-core machine OpenMP's thread barriers cost more than they save for small ops;
--threads 1 gives steadier numbers (the CSV records threads and the load average per row).
Writes results/bench_kmeans.csv (overwrites, or --append) with provenance columns.
Usage: python bench/bench_kmeans.py [--niter 20] [--k 256] [--sklearn-classes 3] [--threads 1]
       python bench/bench_kmeans.py --problems candidates --candidates 500,1000,2000 --threads 1 --append
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from hpcdd.data import load_dataset
from hpcdd.io import now_utc
from hpcdd.nets import build
from hpcdd.runtime.provenance import git_commit, git_dirty
from hpcdd.seeding import derive_seed, generator
from hpcdd.select import kmeans as km

EMBED_CHUNK = 500


def embed_all(data, seed: int, stop: int | None = None) -> np.ndarray:
    """ConvNet3 ``embed()`` of the train images ``[0, stop)`` in no-grad chunks."""
    info = data.info
    net = build("convnet3", info.channels, info.num_classes, info.im_size,
                generator=generator(seed, "bench_kmeans:net")).eval()
    n = len(data.train) if stop is None else stop
    out = np.empty((n, net.embed(data.train.images(torch.arange(1))).shape[1]), np.float32)
    with torch.no_grad():
        for s in range(0, n, EMBED_CHUNK):
            idx = torch.arange(s, min(s + EMBED_CHUNK, n))
            out[s : s + len(idx)] = net.embed(data.train.images(idx)).numpy()
    return out


def embeddings(cache: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("fashionmnist")
    path = cache / f"fmnist_convnet3_seed{seed}.npy"
    labels = data.train.labels.numpy()
    if path.exists():
        x = np.load(path, mmap_mode="r")
        if x.shape[0] == len(labels) and np.array_equal(np.asarray(x[:EMBED_CHUNK]), embed_all(data, seed, EMBED_CHUNK)):
            return np.ascontiguousarray(x), labels
        print(f"stale cache {path}: recomputing", flush=True)
    t0 = time.perf_counter()
    x = embed_all(data, seed)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    print(f"embedded {x.shape} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return x, labels


Fit = tuple[np.ndarray, int]  # centroids, Lloyd iterations run


def timed(fn: Callable[[list[np.ndarray]], list[Fit]], xs: list[np.ndarray]) -> tuple[list[Fit], float, float, float]:
    """Run ``fn(xs)`` -> per-problem fits; also wall s, process CPU s, 1-min load at start."""
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    fits = fn(xs)
    return fits, time.perf_counter() - t0, time.process_time() - c0, load


def sk_fit(x: np.ndarray, k: int, seed: int, max_iter: int | None) -> Fit:
    kw = {} if max_iter is None else {"max_iter": max_iter, "tol": 0.0}
    model = KMeans(k, n_init=1, init="k-means++", random_state=derive_seed(seed, "sklearn") % 2**31, **kw)
    model.fit(x)
    return model.cluster_centers_.astype(np.float32), int(model.n_iter_)


def faiss_native(x: np.ndarray, k: int, niter: int, seed: int) -> Fit:
    model = faiss.Kmeans(x.shape[1], k, niter=niter, seed=derive_seed(seed, "faiss-native") % 2**31)
    model.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.array(model.centroids), len(model.obj)


def methods(k: int, niter: int, seed: int, per_class: bool) -> dict[str, tuple[Callable, dict]]:
    """name -> (fn(list of problems) -> list of centroids, settings recorded in the CSV)."""
    common = {"init": "k-means++ greedy (2+ln k trials) on <=64*k pts", "max_points_per_centroid": 4096}
    sk = {"init": "k-means++ greedy (sklearn)", "max_points_per_centroid": "all"}

    def hp(backend: str, loop: bool = False):
        def run(xs):
            if loop:
                res = [km.kmeans(torch.from_numpy(x), k, seed=km.problem_seed(seed, i), niter=niter, backend=backend)
                       for i, x in enumerate(xs)]
            else:
                res = km.kmeans_batched([torch.from_numpy(x) for x in xs], k, seed=seed, niter=niter, backend=backend)
            return [(r.centroids.numpy(), r.n_iter) for r in res]
        return run

    out = {
        "sklearn": (lambda xs: [sk_fit(x, k, seed, None) for x in xs],
                    {**sk, "niter": "max_iter=300 tol=1e-4"}),
        "sklearn-niter": (lambda xs: [sk_fit(x, k, seed, niter) for x in xs], {**sk, "niter": niter}),
        "faiss": (hp("faiss"), {**common, "niter": niter}),
        "torch": (hp("torch"), {**common, "niter": f"<={niter}"}),
    }
    out["faiss-native"] = (lambda xs: [faiss_native(x, k, niter, seed + i) for i, x in enumerate(xs)],
                           {"init": "random (faiss default)", "max_points_per_centroid": 256, "niter": niter})
    if per_class:
        out["torch-loop"] = (hp("torch", loop=True), {**common, "niter": f"<={niter}"})
    return out


def candidate_problems(x_all: np.ndarray, labels: np.ndarray, classes: int, size: int, seed: int) -> list[np.ndarray]:
    """Per class, a seeded subset of ``size`` of its rows (DREAM's candidates)."""
    out = []
    for c in range(classes):
        rows = np.flatnonzero(labels == c)
        g = generator(seed, f"bench_kmeans:candidates:c{c}")
        pick = torch.randperm(len(rows), generator=g)[:size].sort().values.numpy()
        out.append(np.ascontiguousarray(x_all[rows[pick]]))
    return out


CANDIDATE_SETTINGS = {  # name -> (backend, init, niter, tol, seed offset)
    "torch k-means++": ("torch", "k-means++", 20, None, 0),
    "torch k-means++ (other seed)": ("torch", "k-means++", 20, None, 1),
    "faiss k-means++": ("faiss", "k-means++", 20, None, 0),
    "torch random (official)": ("torch", "random", 100, 1e-4, 0),
    "faiss random (official)": ("faiss", "random", 100, 1e-4, 0),
}


def candidate_rows(xs: list[np.ndarray], k: int, seed: int) -> list[dict]:
    """Time each setting as DREAM runs it and score its picks against k-means++ (the first)."""
    ts = [torch.from_numpy(x) for x in xs]
    rows, ref = [], None
    for name, (backend, init, niter, tol, offset) in CANDIDATE_SETTINGS.items():
        seeds = [derive_seed(seed + offset, f"bench_kmeans:candidates:{i}") for i in range(len(ts))]
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        res = km.kmeans_batched(ts, k, seed=seeds, niter=niter, backend=backend, init=init, tol=tol, assign=False)
        picks = [set(km.nearest(x, r.centroids).reshape(-1).tolist()) for x, r in zip(ts, res)]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        inertia = sum(km.inertia(x, r.centroids) for x, r in zip(ts, res))
        if ref is None:
            ref = {"picks": picks, "inertia": inertia}
        agree = sum(len(a & b) for a, b in zip(picks, ref["picks"])) / sum(len(b) for b in ref["picks"])
        iters = sorted({r.n_iter for r in res})
        rows.append({
            "problem": f"candidates-{len(xs[0])}", "backend": name, "problems": len(xs), "n": sum(len(x) for x in xs),
            "d": xs[0].shape[1], "k": k, "init": init, "niter": niter if tol is None else f"<={niter} tol={tol:g}",
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "iters_run": "-".join(map(str, iters[:: max(1, len(iters) - 1)])),
            "inertia": round(inertia, 1), "inertia_vs_kmeanspp": round(inertia / ref["inertia"], 4),
            "picks_agree_with_kmeanspp": round(agree, 3), "unique_picks": sum(len(p) for p in picks),
            "load_1m": round(load, 2),
        })
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--sklearn-classes", type=int, default=3, help="classes the two sklearn rows run on")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch, FAISS and sklearn's BLAS/OpenMP (default: the libraries' own)")
    ap.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    ap.add_argument("--n", type=int, default=None, help="use only the first N rows (a quick smoke run)")
    ap.add_argument("--skip", default="", help="comma-separated method names to skip")
    ap.add_argument("--problems", default="full,per-class,candidates",
                    help="comma-separated: full, per-class, candidates")
    ap.add_argument("--candidates", default="1000", help="comma-separated candidate counts per class")
    ap.add_argument("--k-real", type=int, default=256, help="k of the candidates problem (the real batch)")
    ap.add_argument("--cache", default="/tmp/hpcdd_bench_kmeans")
    ap.add_argument("--out", default="results/bench_kmeans.csv")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)
    x_all, labels = embeddings(Path(args.cache), args.seed)
    if args.n:
        x_all, labels = x_all[: args.n], labels[: args.n]
    meta = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "commit": git_commit()[:12],
        "dirty": git_dirty(), "host": platform.node(), "date": now_utc(),
        "torch": torch.__version__, "faiss": faiss.__version__, "sklearn": sklearn.__version__,
        "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
        "cpus": os.cpu_count(), "load_1m_start": round(os.getloadavg()[0], 2),
    }
    wanted = set(filter(None, args.problems.split(",")))
    problems = {}
    if "full" in wanted:
        problems["full"] = [np.ascontiguousarray(x_all)]
    if "per-class" in wanted:
        problems["per-class"] = [np.ascontiguousarray(x_all[labels == c]) for c in range(args.classes)]
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    if "candidates" in wanted:
        for size in map(int, args.candidates.split(",")):
            xs = candidate_problems(x_all, labels, args.classes, size, args.seed)
            rows += [{**r, **meta} for r in candidate_rows(xs, args.k_real, args.seed)]
    for pname, xs in problems.items():
        ref = None
        for mname, (fn, settings) in methods(args.k, args.niter, args.seed, pname == "per-class").items():
            if mname in skip:
                continue
            run_xs = xs[: args.sklearn_classes] if mname.startswith("sklearn") and pname == "per-class" else xs
            fits, wall, cpu, load = timed(fn, run_xs)
            per = [km.inertia(torch.from_numpy(x), torch.from_numpy(c)) for x, (c, _) in zip(run_xs, fits)]
            iters = sorted({it for _, it in fits})
            if mname == "sklearn":
                ref = {"per": per, "wall_per_problem": wall / len(run_xs)}
            row = {
                "problem": pname, "backend": mname, "problems": len(run_xs), "n": sum(len(x) for x in run_xs),
                "d": xs[0].shape[1], "k": args.k, **settings, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "iters_run": "-".join(map(str, iters[:: max(1, len(iters) - 1)])),
                "inertia": round(sum(per), 1), "load_1m": round(load, 2),
            }
            if ref is not None:
                m = len(ref["per"])
                row["inertia_vs_sklearn"] = round(sum(per[:m]) / sum(ref["per"]), 5)
                row["speedup_vs_sklearn"] = round(ref["wall_per_problem"] * len(run_xs) / wall, 2)
            rows.append({**row, **meta})
            print({k: v for k, v in row.items()}, flush=True)
    fields = list(dict.fromkeys(f for r in rows for f in r))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        with open(out, newline="") as f:
            old = list(csv.DictReader(f))
        rows = old + rows
        fields = list(dict.fromkeys([*(f for r in old for f in r), *fields]))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
