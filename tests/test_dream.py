"""DREAM sampler (``sampler: dream``) and ``init: kmeans`` on the digits dataset: representatives
are the samples nearest the k-means centroids, the re-clustering schedule, batching, pools,
DREAM+ top-k, state and bit-identical resume, and bad values through the CLI."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from hpcdd.catalog import check_registries, resolve
from hpcdd.cli import main
from hpcdd.data import load_dataset
from hpcdd.errors import ConfigError
from hpcdd.run import run_one
from hpcdd.runtime.preempt import Interrupted
from hpcdd.select import dream as dream_mod
from hpcdd.select.dream import DreamSampler, kmeans_init_indices
from hpcdd.select.kmeans import BACKENDS, INITS, kmeans, nearest
from hpcdd.seeding import derive_seed, fresh_net
from hpcdd.specs.samplers import KMEANS_BACKENDS, KMEANS_INITS, DreamParams

from helpers import QUIET, TINY_EVAL, result, synset, tiny


@pytest.fixture(scope="module")
def bank():
    return load_dataset("digits").train


def net(seed: int = 0, name: str = "mlp"):
    """A fresh net in train mode (an MLP keeps the tests fast; one test uses ConvNet3)."""
    n = fresh_net(name, load_dataset("digits").info, seed, "test-dream")
    n.train()
    return n


def features(bank, model, c: int) -> torch.Tensor:
    """The class's embed() features computed here, independently of the sampler (eval mode)."""
    model.eval()
    with torch.no_grad():
        out = model.embed(bank.images(bank.class_indices[c]))
    model.train()
    return out


def direct(bank, model, c, k, seed, query_k=1, pool=None, params=DreamParams()) -> torch.Tensor:
    """DREAM's selection over the whole class computed from the kmeans module: dataset indices."""
    x = features(bank, model, c)
    fit = kmeans(x if pool is None else x[pool], k, seed=seed, niter=params.kmeans_iters, tol=params.kmeans_tol,
                 init=params.kmeans_init, backend=params.kmeans_backend)
    return bank.class_indices[c][nearest(x, fit.centroids, query_k).reshape(-1)]


def assert_nearest(bank, model, c, chosen, centroids_of):
    """Each pick is (up to float rounding) the nearest sample to its centroid, in float64."""
    x = features(bank, model, c).double()
    pos = {int(i): p for p, i in enumerate(bank.class_indices[c])}
    d = torch.cdist(centroids_of.double(), x)
    picked = d.gather(1, torch.tensor([[pos[int(i)]] for i in chosen]))[:, 0]
    assert torch.all(picked <= d.min(1).values * (1 + 1e-5) + 1e-6)


# ----------------------------------------------------------------------------------------------
# the selection


def test_selected_samples_are_the_nearest_to_the_kmeans_centroids(bank):
    model = net(name="convnet3")  # 2048-d features, as in a real run
    s = DreamSampler(bank, 0, DreamParams())
    chosen = s.indices(3, 8, net=model)
    assert chosen.dtype == torch.int64 and len(chosen) == 8
    assert torch.equal(chosen, direct(bank, model, 3, 8, s.kmeans_seed(3, 8, 0)))
    fit = kmeans(features(bank, model, 3), 8, seed=s.kmeans_seed(3, 8, 0), init="random", niter=100, tol=1e-4)
    assert_nearest(bank, model, 3, chosen, fit.centroids)
    assert set(chosen.tolist()) <= set(bank.class_indices[3].tolist())
    assert model.training and all(m.training for m in model.modules())  # modes restored


def test_batchnorm_net_is_embedded_in_eval_mode_without_side_effects(bank):
    model = net(name="convnet3_bn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen = DreamSampler(bank, 0).indices(0, 8, net=model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert model.training
    assert torch.equal(chosen, direct(bank, model, 0, 8, DreamSampler(bank, 0).kmeans_seed(0, 8, 0)))


def test_reclusters_exactly_every_interval_calls_and_caches_in_between(bank, monkeypatch):
    calls = []
    real = dream_mod.kmeans_batched
    monkeypatch.setattr(dream_mod, "kmeans_batched",
                        lambda xs, k, **kw: calls.append(len(xs)) or real(xs, k, **kw))
    s = DreamSampler(bank, 0, DreamParams(interval=3))
    got = [s.batch_indices(range(10), 8, net=net(step)) for step in range(7)]  # a fresh net per step
    assert calls == [10, 10, 10]  # steps 0, 3, 6: ONE batched call for all ten classes
    assert s.info()["reclusterings"] == 30
    for step in (1, 2, 4, 5):  # cached, although the net changed
        assert all(torch.equal(a, b) for a, b in zip(got[step], got[step - 1]))
    for step in (3, 6):  # re-clustered on the new net
        assert not all(torch.equal(a, b) for a, b in zip(got[step], got[step - 1]))
        assert torch.equal(got[step][4], direct(bank, net(step), 4, 8, s.kmeans_seed(4, 8, step // 3)))


def test_each_batch_size_keeps_its_own_schedule(bank):
    s = DreamSampler(bank, 0, DreamParams(interval=2))
    model = net()
    a = s.indices(0, 8, net=model)
    s.indices(0, 4, net=model)  # another batch size (e.g. a BatchNorm warm-up batch)
    assert torch.equal(s.indices(0, 8, net=net(1)), a)  # second call of n=8: still cached
    assert s.info()["reclusterings"] == 2


def test_batched_over_classes_equals_one_class_at_a_time(bank):
    model = net()
    batched = DreamSampler(bank, 5, DreamParams(interval=2)).batch_indices([2, 7, 0], 8, net=model)
    single = DreamSampler(bank, 5, DreamParams(interval=2))
    one = [single.indices(c, 8, net=model) for c in (2, 7, 0)]
    assert all(torch.equal(a, b) for a, b in zip(batched, one))
    other_seed = DreamSampler(bank, 6).batch_indices([2, 7, 0], 8, net=model)
    assert not all(torch.equal(a, b) for a, b in zip(batched, other_seed))


def test_pool_subsample_is_seeded_recorded_and_candidates_span_the_class(bank):
    model = net()
    params = DreamParams(kmeans_pool=40, interval=1)
    s = DreamSampler(bank, 0, params)
    first = s.batch_indices(range(10), 8, net=model)
    again = DreamSampler(bank, 0, params).batch_indices(range(10), 8, net=model)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    info = s.info()
    assert info["subsampled"] is True and info["pool_size"] == 40
    size = len(bank.class_indices[1])  # < candidates (500): the whole class is a candidate
    assert s.candidate_indices(1, 8, 0) is None and info["candidates_per_class"] == max(map(len, bank.class_indices))
    pool = s.pool_indices(1, 8, 0, size)
    assert len(pool) == 40 and len(set(pool.tolist())) == 40
    assert not torch.equal(pool, s.pool_indices(1, 8, 1, size))  # a fresh subsample per clustering
    assert torch.equal(first[1], direct(bank, model, 1, 8, s.kmeans_seed(1, 8, 0), pool=pool))
    assert DreamSampler(bank, 0, DreamParams()).pool_indices(1, 8, 0, size) is None
    whole = DreamSampler(bank, 0)
    whole.indices(1, 8, net=model)
    assert whole.info()["subsampled"] is False and whole.info()["pool_size"] == len(bank.class_indices[1])


def counting(model):
    """``model`` with its embed() wrapped: returns the list of (rows, bf16 autocast on) per call."""
    calls = []
    inner = model.embed

    def embed(x):
        calls.append((len(x), torch.is_autocast_enabled("cpu")))
        return inner(x)

    model.embed = embed
    return calls


def test_only_a_seeded_candidate_subset_is_embedded_and_searched(bank):
    model = net()
    calls = counting(model)
    params = DreamParams(candidates=40, interval=1)
    s = DreamSampler(bank, 0, params)
    chosen = s.batch_indices([2, 5], 8, net=model)
    assert sum(rows for rows, _ in calls) == 80  # 40 per class, not the ~145 of each class
    for c, got in zip((2, 5), chosen):
        pos = s.candidate_indices(c, 8, 0)
        assert len(pos) == 40 and torch.equal(pos, pos.sort().values)
        assert set(got.tolist()) <= set(bank.class_indices[c][pos].tolist())
        x = features(bank, model, c)[pos]  # DREAM on the candidates alone
        fit = kmeans(x, 8, seed=s.kmeans_seed(c, 8, 0), init="random", niter=100, tol=1e-4)
        assert torch.equal(got, bank.class_indices[c][pos][nearest(x, fit.centroids).reshape(-1)])
    assert not torch.equal(s.candidate_indices(2, 8, 0), s.candidate_indices(2, 8, 1))  # fresh each time
    again = DreamSampler(bank, 0, params).batch_indices([2, 5], 8, net=model)
    assert all(torch.equal(a, b) for a, b in zip(chosen, again))
    info = s.info()
    assert info["candidates_per_class"] == 40 and info["subsampled"] is True and info["pool_size"] == 40


def test_embedding_runs_at_the_run_precision(bank):
    from hpcdd.select.samplers import build_sampler

    for precision, autocast_on in (("fp32", False), ("bf16", True)):
        sampler = build_sampler(resolve(tiny(sampler="dream", precision=precision, net="mlp")), bank)
        assert isinstance(sampler, DreamSampler) and sampler.precision == precision
        model = net()
        calls = counting(model)
        sampler.indices(0, 8, net=model)
        assert calls and all(on is autocast_on for _, on in calls)


def test_no_final_assignment_or_inertia_is_computed(bank, monkeypatch):
    from hpcdd.select import kmeans as km

    def boom(*a, **kw):
        raise AssertionError("DREAM computed the full assignment / inertia it never reads")

    monkeypatch.setattr(km, "_finish", boom)
    for backend in ("torch", "faiss"):
        chosen = DreamSampler(bank, 0, DreamParams(kmeans_backend=backend)).indices(0, 8, net=net())
        assert len(chosen) == 8


def test_dc_reclusters_the_net_its_inner_loop_is_training(monkeypatch):
    """interval 1: one clustering per outer step; from the second on, the net has been trained."""
    from hpcdd.distill.dc import DC
    from hpcdd.runtime.accel import make_accelerator
    from hpcdd.select.samplers import build_sampler

    seen = []
    real = dream_mod.embed_candidates
    monkeypatch.setattr(dream_mod, "embed_candidates", lambda bank, model, groups, *a, **kw: seen.append(
        [p.detach().clone() for p in model.parameters()]) or real(bank, model, groups, *a, **kw))
    cfg = resolve(tiny(method="dc", sampler="dream", interval=1, outer_loop=3, inner_loop=1, ipc=2,
                       batch_real=8, net="mlp"))
    data = load_dataset("digits")
    DC(cfg, data.train, make_accelerator(), build_sampler(cfg, data.train)).step(0)
    fresh = [p.detach() for p in fresh_net(cfg.net, data.info, cfg.seed, "dc-net-0").parameters()]
    assert len(seen) == 3  # every outer step clusters (all classes in one call)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], fresh))  # the fresh net
    for later in seen[1:]:  # the net after 1 and 2 inner loops
        assert not all(torch.equal(a, b) for a, b in zip(later, fresh))
    assert not all(torch.equal(a, b) for a, b in zip(seen[1], seen[2]))


def test_query_k_takes_the_top_k_nearest_per_centroid(bank):
    model = net()
    s = DreamSampler(bank, 0, DreamParams(query_k=2))
    chosen = s.indices(5, 8, net=model)  # 4 centroids x 2 nearest
    assert torch.equal(chosen, direct(bank, model, 5, 4, s.kmeans_seed(5, 8, 0), query_k=2))
    x = features(bank, model, 5).double()
    fit = kmeans(features(bank, model, 5), 4, seed=s.kmeans_seed(5, 8, 0), init="random", niter=100, tol=1e-4)
    pos = {int(i): p for p, i in enumerate(bank.class_indices[5])}
    d = torch.cdist(fit.centroids.double(), x)
    for j, pair in enumerate(chosen.view(4, 2).tolist()):
        top2 = d[j].topk(2, largest=False).values
        got = d[j, [pos[i] for i in pair]]
        assert torch.allclose(got, top2, rtol=1e-5)


def test_state_round_trip_continues_identically(bank, tmp_path):
    a = DreamSampler(bank, 0, DreamParams(interval=2))
    for step in range(3):
        a.batch_indices(range(10), 8, net=net(step))
    path = tmp_path / "s.pt"
    torch.save(a.state_dict(), path)
    b = DreamSampler(bank, 99, DreamParams(interval=2))  # another seed: the state decides
    b.load_state_dict(torch.load(path, weights_only=True))
    assert b.info() == a.info()
    for step in range(3, 6):  # step 3 cached, step 4 re-clusters
        out_a, out_b = a.batch_indices(range(10), 8, net=net(step)), b.batch_indices(range(10), 8, net=net(step))
        assert all(torch.equal(x, y) for x, y in zip(out_a, out_b))
    assert a.info()["reclusterings"] == b.info()["reclusterings"] == 30


def test_dm_with_dream_resumes_bit_identically(tmp_path):
    def stop_after(n):
        calls = {"n": 0}
        return lambda: calls.__setitem__("n", calls["n"] + 1) or calls["n"] >= n

    cfg = tiny(sampler="dream", interval=2, net="mlp")
    run_one(cfg, tmp_path / "ref", QUIET, evaluate=False)
    with pytest.raises(Interrupted):
        run_one(cfg, tmp_path / "r", QUIET, evaluate=False, should_stop=stop_after(3))
    run_one(cfg, tmp_path / "r", QUIET, evaluate=False)
    assert "resumed at iteration 3" in (tmp_path / "r" / "log.txt").read_text()
    assert torch.equal(synset(tmp_path / "r")["images"], synset(tmp_path / "ref")["images"])
    ref_info = json.loads((tmp_path / "ref" / "done").read_text())["sampler"]
    info = json.loads((tmp_path / "r" / "done").read_text())["sampler"]
    assert ref_info["reclusterings"] == info["reclusterings"] == 30  # 6 steps, interval 2, 10 classes
    assert info["kmeans_backend"] in ("faiss-cpu", "torch") and info["embed_seconds"] > 0


def test_random_and_dream_differ_only_in_the_real_batches(tmp_path):
    run_one(tiny(iterations=2, net="mlp"), tmp_path / "rand", QUIET, evaluate=False)
    run_one(tiny(iterations=2, net="mlp", sampler="dream"), tmp_path / "dream", QUIET, evaluate=False)
    assert not torch.equal(synset(tmp_path / "rand")["images"], synset(tmp_path / "dream")["images"])


# ----------------------------------------------------------------------------------------------
# init: kmeans


def test_kmeans_init_picks_the_samples_nearest_the_centroids(bank):
    cfg = resolve(tiny(ipc=3, init="kmeans", net="mlp"))
    idx = kmeans_init_indices(bank, cfg, torch.device("cpu"))
    assert torch.equal(idx, kmeans_init_indices(bank, cfg, torch.device("cpu")))  # deterministic
    assert torch.equal(bank.labels[idx], torch.arange(10).repeat_interleave(3))  # class-major
    model = fresh_net(cfg.net, bank.info, cfg.seed, "init-kmeans")
    exact = 0
    for c in range(10):
        want = direct(bank, model, c, 3, derive_seed(cfg.seed, f"init-kmeans:c{c}"))
        mine = idx[c * 3 : (c + 1) * 3]
        assert len(set(mine.tolist())) == 3  # distinct within a class
        if len(set(want.tolist())) == 3:  # no sample nearest two centroids: exactly the nearest
            assert torch.equal(mine, want)
            exact += 1
    assert exact >= 5  # the comparison above is not vacuous
    other = kmeans_init_indices(bank, resolve(tiny(ipc=3, init="kmeans", net="mlp", seed=1)), torch.device("cpu"))
    assert not torch.equal(idx, other)


def test_kmeans_init_takes_distinct_samples_when_centroids_share_a_nearest():
    cand = torch.tensor([[4, 1, 2], [4, 5, 1], [1, 4, 6]])
    assert dream_mod._distinct(cand).tolist() == [4, 5, 1]


def test_dm_starts_from_the_kmeans_images(bank):
    from hpcdd.distill.dm import DM
    from hpcdd.runtime.accel import make_accelerator
    from hpcdd.select.samplers import RandomSampler

    cfg = resolve(tiny(ipc=2, init="kmeans", net="mlp"))
    dm = DM(cfg, bank, make_accelerator(), RandomSampler(bank, 0))
    want = bank.images(kmeans_init_indices(bank, cfg, torch.device("cpu")))
    assert torch.equal(dm.synthetic().images, want)


# ----------------------------------------------------------------------------------------------
# declaration, CLI


def test_params_match_the_kmeans_module_and_own_their_names():
    assert KMEANS_BACKENDS == BACKENDS and KMEANS_INITS == INITS
    check_registries()
    assert resolve(tiny(sampler="dream")).sampler_params == {
        "interval": 10, "query_k": 1, "candidates": 500, "kmeans_pool": None, "kmeans_iters": 100,
        "kmeans_tol": 1e-4, "kmeans_backend": "auto", "kmeans_init": "random"}


def test_a_method_without_a_net_is_refused(bank):
    with pytest.raises(ConfigError, match="without such a net"):
        DreamSampler(bank, 0).indices(0, 8)


def test_dm_with_dream_runs_end_to_end_through_the_cli(tmp_path, capsys):
    code = main(["distill", "--method", "dm", "--sampler", "dream", "--interval", "1", "--net", "mlp", "--dataset", "digits",
                 "--ipc", "1", "--iterations", "2", "--batch-real", "8", "--eval-epochs", "2", "--eval-n", "1",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    row = result(tmp_path / "run", TINY_EVAL)
    assert row["sampler"] == "dream" and row["interval"] == 1
    assert row["sampler_reclusterings"] == 20 and row["sampler_subsampled"] is False
    assert row["sampler_kmeans_backend"] in ("faiss-cpu", "torch")
    assert row["sampler_embed_seconds"] > 0 and row["sampler_kmeans_seconds"] > 0
    assert 0 < row["match_seconds"] < row["distill_seconds"]
    assert row["candidates"] == 500 and row["sampler_candidates_per_class"] == max(
        len(i) for i in load_dataset("digits").train.class_indices)  # every class is smaller
    assert row["sampler_kmeans_iterations"] >= 20


TINY = ["distill", "--dataset", "digits", "--ipc", "1", "--iterations", "1", "--batch-real", "8",
        "--eval-epochs", "1", "--eval-n", "1", "--no-progress"]


@pytest.mark.parametrize("flags, words", [
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--sampler", "dream", "--interval", "0"], "interval must be >= 1"),
    (["--sampler", "dream", "--query-k", "3"], "batch_real 8 is not a multiple of query_k 3"),
    (["--sampler", "dream", "--batch-real", "5000"], "batch_real 5000 exceeds the smallest class"),
    (["--sampler", "dream", "--kmeans-pool", "4"], "kmeans_pool 4 is smaller than the 8 centroids"),
    (["--sampler", "dream", "--kmeans-backend", "gpu"], "kmeans_backend must be one of"),
    (["--sampler", "dream", "--kmeans-iters", "0"], "kmeans_iters must be >= 1"),
    (["--sampler", "dream", "--candidates", "4"], "candidates 4 is smaller than the 8 centroids"),
    (["--sampler", "dream", "--candidates", "0"], "candidates must be >= 1"),
    (["--sampler", "dream", "--kmeans-tol", "0"], "kmeans_tol must be > 0"),
    (["--sampler", "dream", "--kmeans-tol=-1e-3"], "kmeans_tol must be > 0"),
    (["--interval", "2"], "is not a parameter of method dm or sampler random"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, capsys, flags, words):
    try:
        code = main([*TINY, *flags, "--out", str(tmp_path / "r")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert words in err


def test_every_dream_option_has_help_text(capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, words in [("--interval", "Re-cluster a class"), ("--query-k", "DREAM+"),
                        ("--kmeans-pool", "seeded subsample"), ("--kmeans-iters", "Iteration cap"),
                        ("--kmeans-backend", "FAISS"), ("--kmeans-init", "k-means++"),
                        ("--candidates", "seeded subset"), ("--kmeans-tol", "summed squared move")]:
        assert flag in text and words in text, flag
    assert "dream" in text


def test_forced_faiss_without_faiss_is_refused_before_any_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    out = tmp_path / "r"
    code = main([*TINY, "--sampler", "dream", "--kmeans-backend", "faiss", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs the faiss module" in err, err
    assert not out.exists()  # no run.json, config.yaml or log.txt


def test_an_error_during_the_run_is_recorded_in_the_log(tmp_path, monkeypatch):
    def failing(*a, **kw):
        raise ConfigError("k-means backend exploded")

    monkeypatch.setattr(dream_mod, "kmeans_batched", failing)
    with pytest.raises(ConfigError):
        run_one(tiny(sampler="dream", net="mlp", iterations=2), tmp_path / "r", QUIET, evaluate=False)
    assert "error: k-means backend exploded" in (tmp_path / "r" / "log.txt").read_text()
