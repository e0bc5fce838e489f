"""k-means backends (hpcdd.select.kmeans): agreement, seeding, batching, errors, FAISS fallbacks."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from hpcdd.errors import ConfigError
from hpcdd.select import kmeans as km

faiss = pytest.importorskip("faiss")


def blobs(n_per: int, centers: int, d: int = 8, seed: int = 0, spread: float = 20.0) -> torch.Tensor:
    """Well-separated Gaussian blobs, ``n_per`` points around each of ``centers`` centres."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, d, generator=g) * spread
    return (mu[:, None] + torch.randn(centers, n_per, d, generator=g)).reshape(-1, d)


def truth(n_per: int, centers: int) -> np.ndarray:
    return np.repeat(np.arange(centers), n_per)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_backends_agree_on_blobs(init):
    x = blobs(60, 6)
    res = {b: km.kmeans(x, 6, seed=3, backend=b, init=init) for b in ("torch", "faiss")}
    assert res["torch"].backend == "torch" and res["faiss"].backend == "faiss-cpu"
    for r in res.values():
        assert r.centroids.shape == (6, 8) and r.centroids.dtype == torch.float32
        assert r.assign.shape == (360,) and r.assign.dtype == torch.int64
        assert 1 <= r.n_iter <= km.DEFAULT_NITER
    if init == "k-means++":  # random init may merge two blobs; k-means++ must not
        assert adjusted_rand_score(truth(60, 6), res["torch"].assign.numpy()) == 1.0
    assert adjusted_rand_score(res["torch"].assign.numpy(), res["faiss"].assign.numpy()) == 1.0
    assert res["torch"].inertia == pytest.approx(res["faiss"].inertia, rel=1e-5)


def test_inertia_is_float64_sum_over_all_points():
    x = blobs(30, 4)
    r = km.kmeans(x, 4, seed=0, backend="torch")
    expect = ((x.double() - r.centroids.double()[r.assign]) ** 2).sum().item()
    assert r.inertia == pytest.approx(expect, rel=1e-12)
    assert km.inertia(x, r.centroids) == r.inertia  # nearest-centroid scoring, as for sklearn in bench/
    d = torch.cdist(x.double(), r.centroids.double())
    assert torch.equal(r.assign, d.argmin(1))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_seeded_runs_reproducible(backend):
    x = blobs(50, 5, spread=2.0)  # overlapping blobs: the init matters
    a = km.kmeans(x, 7, seed=11, backend=backend)
    b = km.kmeans(x, 7, seed=11, backend=backend)
    c = km.kmeans(x, 7, seed=12, backend=backend)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assign, b.assign)
    assert a.inertia == b.inertia
    assert not torch.equal(a.centroids, c.centroids)


def test_numpy_input_and_cap_subsample_still_assigns_everything():
    x = blobs(100, 3).numpy()
    r = km.kmeans(x, 3, seed=0, backend="torch", max_points_per_centroid=10)  # trains on 30 points
    assert r.assign.shape == (300,)
    assert adjusted_rand_score(truth(100, 3), r.assign.numpy()) == 1.0


def test_batched_equals_per_problem_unequal_sizes():
    xs = [blobs(n, 4, seed=s, spread=3.0) for n, s in ((20, 1), (35, 2), (12, 3))]
    seeds = [5, 6, 7]
    batched = km.kmeans_batched(xs, 4, seed=seeds, backend="torch", niter=10)
    for x, s, r in zip(xs, seeds, batched):
        single = km.kmeans(x, 4, seed=s, backend="torch", niter=10)
        assert r.assign.shape == (x.shape[0],)
        assert torch.equal(r.assign, single.assign)
        torch.testing.assert_close(r.centroids, single.centroids, rtol=1e-5, atol=1e-5)
        assert r.inertia == pytest.approx(single.inertia, rel=1e-5)


def test_batched_padded_tensor_and_int_seed():
    xs = [blobs(n, 3, seed=s) for n, s in ((10, 1), (16, 2))]
    padded = torch.full((2, 48, 8), 1e6)  # garbage beyond each length must be ignored
    for i, x in enumerate(xs):
        padded[i, : x.shape[0]] = x
    out = km.kmeans_batched(padded, 3, seed=9, lengths=[30, 48], backend="torch")
    for i, (x, r) in enumerate(zip(xs, out)):
        single = km.kmeans(x, 3, seed=km.problem_seed(9, i), backend="torch")
        assert torch.equal(r.assign, single.assign)
        assert adjusted_rand_score(truth(x.shape[0] // 3, 3), r.assign.numpy()) == 1.0


def test_batched_faiss_loops_and_agrees_with_torch():
    xs = [blobs(n, 3, seed=s) for n, s in ((15, 1), (25, 2))]
    f = km.kmeans_batched(xs, 3, seed=1, backend="faiss")
    t = km.kmeans_batched(xs, 3, seed=1, backend="torch")
    for a, b in zip(f, t):
        assert a.backend == "faiss-cpu"
        assert adjusted_rand_score(a.assign.numpy(), b.assign.numpy()) == 1.0


def test_empty_cluster_is_relocated():
    # 3 tight duplicate groups + k=4: some centre must take a point apart, none stays empty
    x = torch.cat([torch.zeros(10, 2), torch.ones(10, 2) * 5, torch.tensor([[5.0, 6.0]]), torch.ones(10, 2) * -5])
    r = km.kmeans(x, 4, seed=0, backend="torch", init="random")
    assert torch.bincount(r.assign, minlength=4).min() >= 1
    assert r.inertia == pytest.approx(0.0, abs=1e-6)


def test_nearest_returns_indices_per_centroid():
    x = torch.tensor([[0.0, 0], [0.1, 0], [10, 10], [10.3, 10], [9.8, 10]])
    c = torch.tensor([[10.0, 10.0], [0.0, 0.0]])
    assert km.nearest(x, c).tolist() == [[2], [0]]
    assert km.nearest(x, c, k_nearest=3).tolist() == [[2, 4, 3], [0, 1, 4]]
    with pytest.raises(ConfigError):
        km.nearest(x, c, k_nearest=6)


def one_line_error(fn) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def test_error_cases_are_one_line_config_errors():
    x = blobs(5, 2)
    msg = one_line_error(lambda: km.kmeans(x, 11, seed=0))
    assert "k=11" in msg and "n=10" in msg
    bad = x.clone()
    bad[3, 1] = float("nan")
    assert "NaN" in one_line_error(lambda: km.kmeans(bad, 2, seed=0))
    bad[3, 1] = float("inf")
    assert "Inf" in one_line_error(lambda: km.kmeans(bad, 2, seed=0, backend="faiss"))
    assert "k=0" in one_line_error(lambda: km.kmeans(x, 0, seed=0))
    assert "'cuml'" in one_line_error(lambda: km.kmeans(x, 2, seed=0, backend="cuml"))
    one_line_error(lambda: km.kmeans(x, 2, seed=0, init="kmeans||"))
    one_line_error(lambda: km.kmeans(x, 2, seed=0, niter=0))
    one_line_error(lambda: km.kmeans_batched([x, blobs(2, 2)], 5, seed=0))  # problem 1 has n=4


def test_faiss_unimportable(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    x = blobs(20, 3)
    assert "faiss" in one_line_error(lambda: km.kmeans(x, 3, seed=0, backend="faiss"))
    r = km.kmeans(x, 3, seed=0, backend="auto")
    assert r.backend == "torch"


def test_auto_prefers_faiss_but_keeps_cuda_input_on_the_gpu(monkeypatch):
    assert km.kmeans(blobs(20, 3), 3, seed=0).backend == "faiss-cpu"
    cuda = torch.device("cuda", 0)
    assert km._resolve_backend("auto", cuda) == "torch"  # this faiss has no GPU support
    assert km._resolve_backend("faiss", cuda) == "faiss"  # explicit: CPU FAISS
    monkeypatch.setattr(km, "_faiss_gpu_device", lambda f, device: 0)
    assert km._resolve_backend("auto", cuda) == "faiss"


def test_faiss_gpu_unavailable_falls_back_to_cpu(monkeypatch):
    cuda = torch.device("cuda", 1)
    assert km._faiss_gpu_device(faiss, torch.device("cpu")) is None
    no_gpu_build = types.SimpleNamespace(get_num_gpus=lambda: 0)  # a CPU-only faiss module
    assert km._faiss_gpu_device(no_gpu_build, cuda) is None
    zero_gpus = types.SimpleNamespace(StandardGpuResources=object, get_num_gpus=lambda: 0)
    assert km._faiss_gpu_device(zero_gpus, cuda) is None
    one_gpu = types.SimpleNamespace(StandardGpuResources=object, get_num_gpus=lambda: 2)
    assert km._faiss_gpu_device(one_gpu, cuda) == 1  # the input's device, never "all GPUs"

    def broken_resources():
        raise RuntimeError("CUDA driver version is insufficient")

    # a GPU build whose resources cannot start: warn and use CPU FAISS
    fake = types.SimpleNamespace(
        StandardGpuResources=broken_resources, get_num_gpus=lambda: 1, IndexFlatL2=faiss.IndexFlatL2
    )
    with pytest.warns(UserWarning, match="CPU FAISS"):
        index, kind, _ = km._faiss_index(fake, 8, cuda)
    assert kind == "faiss-cpu" and isinstance(index, faiss.IndexFlatL2)

    # end to end: the input "is on a GPU" but this faiss has no GPU support -> CPU FAISS runs
    real = km._faiss_index
    monkeypatch.setattr(km, "_faiss_index", lambda f, d, device: real(f, d, cuda))
    r = km.kmeans(blobs(20, 3), 3, seed=0, backend="faiss")
    assert r.backend == "faiss-cpu"
    assert adjusted_rand_score(truth(20, 3), r.assign.numpy()) == 1.0


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_tolerance_stops_once_the_centroids_barely_move(backend):
    x = blobs(80, 6, spread=1.5)  # overlapping blobs: many Lloyd iterations to a fixed point
    full = km.kmeans(x, 6, seed=2, backend=backend, init="random", niter=100)
    loose = km.kmeans(x, 6, seed=2, backend=backend, init="random", niter=100, tol=1e3)
    assert loose.n_iter == 1 < full.n_iter  # the first move is far below 1e3 here
    capped = km.kmeans(x, 6, seed=2, backend=backend, init="random", niter=2, tol=1e-12)
    assert capped.n_iter == 2  # the cap wins over a tight tolerance
    tight = km.kmeans(x, 6, seed=2, backend=backend, init="random", niter=100, tol=1e-12)
    torch.testing.assert_close(tight.centroids, full.centroids, rtol=1e-5, atol=1e-5)  # = fixed point
    # the rule: stop after the first iteration whose summed squared move of the centroids is <= tol
    steps = [km.kmeans(x, 6, seed=2, backend=backend, init="random", niter=j, tol=1e-30).centroids
             for j in range(1, 5)]
    moves = [float((b - a).double().pow(2).sum()) for a, b in zip(steps, steps[1:])]  # moves 2..4
    assert moves[0] > 0
    tol = moves[1] * 1.0001
    want = 2 + next(i for i, m in enumerate(moves) if m <= tol)
    assert km.kmeans(x, 6, seed=2, backend=backend, init="random", niter=100, tol=tol).n_iter == want


def test_batched_tolerance_stops_each_problem_on_its_own():
    xs = [blobs(n, 4, seed=s, spread=2.0) for n, s in ((30, 1), (50, 2), (20, 3))]
    batched = km.kmeans_batched(xs, 4, seed=[1, 2, 3], backend="torch", init="random", niter=50, tol=1e-3)
    for x, s, r in zip(xs, (1, 2, 3), batched):
        single = km.kmeans(x, 4, seed=s, backend="torch", init="random", niter=50, tol=1e-3)
        assert r.n_iter == single.n_iter
        torch.testing.assert_close(r.centroids, single.centroids, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_centroids_only_skips_the_assignment_and_inertia(backend):
    x = blobs(40, 3)
    full = km.kmeans(x, 3, seed=4, backend=backend)
    bare = km.kmeans(x, 3, seed=4, backend=backend, assign=False)
    assert bare.assign is None and bare.inertia is None and bare.n_iter == full.n_iter
    assert torch.equal(bare.centroids, full.centroids)


def test_a_tolerance_of_zero_or_below_is_refused():
    x = blobs(5, 2)
    assert "tolerance" in one_line_error(lambda: km.kmeans(x, 2, seed=0, tol=0.0))
    one_line_error(lambda: km.kmeans(x, 2, seed=0, tol=-1.0))
