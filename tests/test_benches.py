"""The benchmark scripts run (tiny settings): a broken bench is caught before its next real use."""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpcdd.config import EvalConfig
from hpcdd.run import run_one

from helpers import QUIET, tiny

REPO = Path(__file__).resolve().parents[1]


def test_bench_dm_runs(tmp_path):
    """On sklearn's digits (always present; the committed rows are Fashion-MNIST's)."""
    out = tmp_path / "dm.csv"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_dm.py"), "--iters", "1", "--warmup", "0",
                           "--variants", "per-class", "--dataset", "digits", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert len(rows) >= 1 and (rows["sec_per_iter"] > 0).all()


def dream_curve_module():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import dream_curve
    finally:
        sys.path.pop(0)
    return dream_curve


def test_dream_curve_runs_on_real_runs(tmp_path):
    """Tiny digits runs (the logic over seeds is tested on fabricated curves below): quick evals
    of 2 models at iterations 0 and 2, the final dc100 evaluation as the last point."""
    dream_curve = dream_curve_module()
    exe = dataclasses.replace(QUIET, eval_at=(2,), eval_point_n=2)
    for sampler, extra in (("random", {}), ("dream", {"interval": 2, "init": "kmeans"})):
        run_one(tiny(sampler=sampler, iterations=4, batch_real=8, net="mlp", **extra), tmp_path / "runs" / sampler,
                exe, evals=[EvalConfig(models=("mlp",), epochs=100, n=1)])
    stem = tmp_path / "curve"
    assert dream_curve.main([str(tmp_path / "runs"), "--out", str(stem)]) == 0
    table = pd.read_csv(f"{stem}.csv")
    assert set(table["sampler"]) == {"random", "dream"} and sorted(set(table["it"])) == [0, 2, 4]
    assert set(table[table["it"] == 4]["source"]) == {"final"} and set(table[table["it"] == 2]["models"]) == {2}
    summary = pd.read_csv(f"{stem}_summary.csv")
    assert list(summary["method"]) == ["dm"] and summary["seeds_dream"].item() == 1
    assert summary["random_s_per_iter"].item() > 0 and summary["dream_build_s"].item() > 0  # init: kmeans
    assert Path(f"{stem}.png").stat().st_size > 0


def fake_curves(points: dict[tuple[str, int], list[tuple[int, float]]], budget: int = 100) -> pd.DataFrame:
    rows = []
    for (sampler, seed), curve in points.items():
        secs = {"random": 100.0, "dream": 120.0}[sampler]
        for it, acc in curve:
            rows.append({"method": "dm", "sampler": sampler, "ipc": 10, "seed": seed, "run_id": f"{sampler}{seed}",
                         "iterations": budget, "distill_seconds": secs + (10.0 if sampler == "dream" else 0.0),
                         "build_seconds": 10.0 if sampler == "dream" else 0.0, "loop_seconds": secs, "it": it,
                         "acc": acc, "models": 2, "source": "quick"})
    return pd.DataFrame(rows)


def test_dream_curve_finds_the_crossing_with_an_interval_over_seeds():
    dc = dream_curve_module()
    assert dc.crossing([0, 10, 20, 40], [0.5, 0.6, 0.7, 0.8], 0.65) == pytest.approx(15.0)  # between 10 and 20
    assert dc.crossing([0, 10, 20], [0.7, 0.72, 0.8], 0.65) == 10.0  # never before the first point after 0
    assert dc.crossing([0, 10, 20], [0.5, 0.6, 0.62], 0.65) is None
    c = fake_curves({
        ("random", 0): [(0, 0.5), (50, 0.7), (100, 0.80)], ("random", 1): [(0, 0.5), (50, 0.7), (100, 0.78)],
        ("dream", 0): [(0, 0.6), (10, 0.75), (20, 0.85), (100, 0.9)],   # reaches 0.80 at 15
        ("dream", 1): [(0, 0.6), (10, 0.70), (20, 0.80), (100, 0.9)],   # reaches 0.78 at 18
    })
    s = dc.summarise(c).iloc[0]
    assert s["random_final"] == pytest.approx(0.79) and s["reached"] == 2 and s["seeds_paired"] == 2
    assert s["reach_iters_seed_min"] == pytest.approx(15.0) and s["reach_iters_seed_max"] == pytest.approx(18.0)
    assert s["reach_iters"] == pytest.approx(16.5)  # the mean curve: 0.725 at 10, 0.825 at 20
    assert s["speedup"] == pytest.approx(100 / 16.5, abs=0.01)
    assert s["wall_to_reach_s"] == pytest.approx(10 + 1.2 * 16.5) and s["random_wall_s"] == 100.0
    assert s["wall_gain"] == pytest.approx(100 / (10 + 1.2 * 16.5), abs=0.01)
    never = fake_curves({("random", 0): [(0, 0.5), (100, 0.9)], ("dream", 0): [(0, 0.5), (100, 0.85)]})
    assert dc.summarise(never).iloc[0]["reached"] == 0 and pd.isna(dc.summarise(never).iloc[0]["reach_iters"])


def test_dream_curve_figure_is_readable(tmp_path):
    """Issue 22 item 12: the y-label fits the figure, iteration ticks are integers even on a
    1-iteration budget, and there is one legend for all panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    dc = dream_curve_module()
    c = pd.concat([fake_curves({("random", 0): [(0, 0.5), (1, 0.6)], ("dream", 0): [(0, 0.5), (1, 0.62)]}, budget=1),
                   fake_curves({("random", 0): [(0, 0.5), (100, 0.8)], ("dream", 0): [(0, 0.5), (100, 0.81)]})
                   .assign(method="dsa")])
    fig = dc.plot(c, dc.summarise(c))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        label = ax.yaxis.label
        if label.get_text():
            ext = label.get_window_extent(renderer)
            assert box.y0 <= ext.y0 and ext.y1 <= box.y1 and box.x0 <= ext.x0, "y-label clipped"
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_legend() is None
    assert len(fig.legends) == 1
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("random") for t in texts) and any(t.startswith("dream") for t in texts)


def test_migrate_results_gives_todays_ids(tmp_path):
    """An old-layout row (no eval_id, the old run id) gets the ids today's CLI gives the same config."""
    from hpcdd.catalog import resolve_point

    old = tmp_path / "old.csv"
    old.write_text("run_id,protocol,method,dataset,ipc,seed,iterations,lr_img,momentum_img,init,eval_models,"
                   "eval_epochs,eval_n,acc_mean\n"
                   "29e7447386e7,dc300,random,fashionmnist,10,0,0,,0.5,real,convnet3,300,3,0.75\n"
                   "4b59bfa40675,dc300,dm,fashionmnist,10,0,200,1.0,0.5,real,convnet3,300,3,0.80\n")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "migrate_results.py"), str(old)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(old, dtype={"run_id": str, "eval_id": str, "run_id_v1": str})
    for row, method, iterations in zip(rows.itertuples(), ("random", "dm"), (0, 200)):
        flat = {"method": method, "dataset": "fashionmnist", "ipc": 10, "eval_epochs": 300, "eval_n": 3}
        if iterations:
            flat["iterations"] = iterations
        _, _, rid, eid = resolve_point(flat)
        assert (row.run_id, row.eval_id) == (rid, eid)
    assert list(rows["run_id_v1"]) == ["29e7447386e7", "4b59bfa40675"] and list(rows["acc_mean"]) == [0.75, 0.80]
    assert "momentum_img" not in rows.columns or rows["momentum_img"].isna().iloc[0]  # a coreset has none
    assert list(rows["eval_models"]) == ["convnet3"] * 2 and list(rows["eval_n"]) == [3, 3]


def test_bench_mtt_memory_measures_one_iteration(tmp_path):
    """On digits (the committed rows are Fashion-MNIST's): a row with a positive peak and an
    estimate, and a configuration whose estimate is above the cap skipped, not run."""
    out = tmp_path / "mem.csv"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_mtt_memory.py"), "--dataset", "digits",
                           "--net", "mlp", "--ipcs", "1", "--syn-steps", "2,100000", "--batch-syn", "full",
                           "--cap-gb", "50", "--fit", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert list(rows["syn_steps"]) == [2] and (rows["peak_delta_mb"] > 0).all() and (rows["estimate_gb"] > 0).all()
    assert "skip ipc 1 syn_steps 100000" in proc.stdout and "MEMORY_FIT =" in proc.stdout


# -- bench/bench_official.py: the official code is not available offline, so its half runs on a
# stand-in checkout with the official entry points; the hpcdd half runs for real on digits.

def _bench_official():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import bench_official
    finally:
        sys.path.pop(0)
    return bench_official


STAND_IN_UTILS = """\
import time
import networks

def get_network(*args, **kwargs):
    return networks.flat

def evaluate_synset(*args, **kwargs):
    raise AssertionError("the harness should have replaced evaluate_synset")
"""
STAND_IN_MAIN = """\
import argparse, json, sys, time
from pathlib import Path
from utils import get_network, evaluate_synset

p = argparse.ArgumentParser()
p.add_argument('--Iteration', type=int)
p.add_argument('--num_eval', type=int, default=20)
args, _ = p.parse_known_args()
Path(__file__).with_name('argv.json').write_text(json.dumps(sys.argv[1:]))
for it in range(args.Iteration + 1):
    if it == 0:
        for _ in range(args.num_eval):
            evaluate_synset()
    get_network()
    time.sleep(0.05 * (it + 1))
raise SystemExit('ran past the last timed iteration')
"""


def _stand_in(root: Path) -> Path:
    """A checkout with the official file names: main.py / main_DM.py loop over get_network."""
    root.mkdir()
    (root / "utils.py").write_text(STAND_IN_UTILS)
    (root / "networks.py").write_bytes(b"def flat(x):\r\n    return x.view(x.size(0), -1)\r\n")
    for script in ("main.py", "main_DM.py"):
        (root / script).write_text(STAND_IN_MAIN)
    fmnist = root / "fmnist"
    fmnist.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(fmnist / f"{name}.gz", "wb") as f:
            f.write(name.encode())
    return root


def test_bench_official_times_the_scripts_iterations_without_their_evaluation(tmp_path):
    """The official half on a stand-in: patched copy, data layout, argv, marks, no evaluation."""
    src, work, out = _stand_in(tmp_path / "official"), tmp_path / "work", tmp_path / "official.csv"
    bench = [sys.executable, str(REPO / "bench" / "bench_official.py")]
    for extra in (["--cases", "dsa:10:2:1:1"], ["--cases", "dm:10:1:0:1", "--append"]):
        proc = subprocess.run([*bench, str(src), "--codes", "official", "--fmnist-src", str(src / "fmnist"),
                               "--work", str(work), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert list(rows["method"]) == ["dsa", "dm"] and list(rows["iterations_timed"]) == [2, 1]
    dsa = [float(x) for x in rows["wall_s_each"][0].split(";")]  # iterations 1 and 2 sleep 0.10 and 0.15 s
    assert dsa[0] >= 0.1 and dsa[1] >= 0.15 and rows["wall_s_per_iter_min"][0] == min(dsa)
    assert (rows["code"] == "official").all() and (rows["threads"] == 1).all()
    patched = b"def flat(x):\r\n    return x.reshape(x.size(0), -1)\r\n"  # CRLF kept
    assert (work / "official" / "networks.py").read_bytes() == patched
    assert (work / "official" / "main.py").read_bytes() == (src / "main.py").read_bytes()
    assert (src / "networks.py").read_bytes().count(b".view(") == 1  # the checkout itself untouched
    assert (work / "data" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes() == b"t10k-labels-idx1-ubyte"
    argv = json.loads((work / "official" / "argv.json").read_text())  # the last run: DM
    assert argv[argv.index("--num_eval") + 1] == "0" and argv[argv.index("--Iteration") + 1] == "1"
    assert argv[argv.index("--dsa_strategy") + 1] == "color_crop_cutout_flip_scale_rotate"
    (tmp_path / "official.md").unlink()  # the table again from the CSV alone
    assert subprocess.run([*bench, "--summary", str(out)], capture_output=True, timeout=60).returncode == 0
    table = (tmp_path / "official.md").read_text()
    assert "| dsa | 10 | 2 / - |" in table and "| dm | 10 | 1 / - |" in table


def test_bench_official_hpcdd_half_runs(tmp_path):
    """The hpcdd half for real (digits, one DM iteration timed): `hpcdd distill` with a mark per step."""
    out = tmp_path / "hpcdd.csv"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_official.py"), "--codes", "hpcdd",
                           "--dataset", "digits", "--cases", "dm:1:1:0:1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert len(rows) == 1 and rows["code"][0] == "hpcdd" and rows["iterations_timed"][0] == 1
    assert rows["wall_s_per_iter_median"][0] > 0 and rows["cpu_s_per_iter_median"][0] > 0
    assert rows["official_commit"][0] == "-"


def test_bench_official_ratios_pool_every_timed_iteration():
    bo = _bench_official()
    row = {"method": "dm", "ipc": 10, "load1_before": 1.0, "load1_after": 2.0}
    rows = [{**row, "code": "official", "wall_s_each": "3;5", "cpu_s_each": "2;4"},
            {**row, "code": "hpcdd", "wall_s_each": "2", "cpu_s_each": "1"},
            {**row, "code": "official", "wall_s_each": "9", "cpu_s_each": "6"},
            {**row, "code": "hpcdd", "wall_s_each": "2;4", "cpu_s_each": "2;3"}]
    (s,) = bo.summarise(rows)
    assert (s["official_iters"], s["hpcdd_iters"]) == (3, 3)
    assert s["ratio_wall_median"] == 5 / 2 and s["ratio_wall_min"] == 3 / 2 and s["ratio_cpu_median"] == 4 / 2
    assert bo.torch2_patch(b"a.view(1)\nb.view(2).view_as(c)\n") == (b"a.reshape(1)\nb.reshape(2).view_as(c)\n", 2)


@pytest.mark.parametrize("case", ["dm:10:1:0", "gm:10:1:0:1", "dm:10:0:0:1", "dm:x:1:0:1"])
def test_bench_official_refuses_a_bad_case(case):
    with pytest.raises(SystemExit, match="bad case"):
        _bench_official().Case.parse(case)


def test_dream_curve_grids_can_resolve_the_claim():
    """Issue 19: DM ipc 10 >= 500 iterations, DC and DSA ipc 1 (1 outer, 1 inner) >= 200, both
    samplers, >= 3 seeds, >= 10 evaluation points of >= 2 models; DREAM rows start from init kmeans."""
    from hpcdd.run import quick_eval_points
    from hpcdd.sweep.grid import load_grid

    for name, methods, ipc, least in (("dream_curve_dm", {"dm"}, 10, 500), ("dream_curve_dc", {"dc", "dsa"}, 1, 200)):
        sweep = load_grid(REPO / "launch" / f"{name}.yaml")
        runs = [r.config for r in sweep.runs]
        assert {r.method for r in runs} == methods and {r.ipc for r in runs} == {ipc}
        for method in methods:
            for sampler in ("random", "dream"):
                mine = [r for r in runs if r.method == method and r.sampler == sampler]
                assert len({r.seed for r in mine}) >= 3 and all(r.iterations >= least for r in mine)
                assert {r.params["init"] for r in mine} == ({"kmeans"} if sampler == "dream" else {"real"})
                if method != "dm":
                    assert {(r.params["outer_loop"], r.params["inner_loop"]) for r in mine} <= {(None, None)}
        exe = sweep.exec
        points = quick_eval_points(least, exe.eval_every, exe.eval_points, exe.eval_at) | {least}  # + the final
        assert len(points) >= 10 and exe.eval_point_n >= 2
        assert {(c.eval.epochs, c.eval.n, c.eval.models) for c in sweep.cells} == {(100, exe.eval_point_n, ("convnet3",))}


def test_bench_dream_runs(tmp_path):
    """On digits: random and two DREAM settings stepped interleaved, per-part seconds, ratios."""
    out = tmp_path / "dream.csv"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_dream.py"), "--dataset", "digits", "--ipc", "1",
                           "--batch-real", "8", "--iters", "2", "--dream", "", "candidates=20,interval=1",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out).set_index("variant")
    assert list(rows.index) == ["random", "dream0[defaults]", "dream1[candidates=20,interval=1]"]
    assert rows.loc["random", "ratio_wall"] == 1.0 and (rows["sec_per_iter"] > 0).all()
    busy = rows.loc["dream1[candidates=20,interval=1]"]
    assert busy["clusterings_timed"] == 20 and busy["candidates_per_class"] == 20 and busy["embed_s_per_iter"] > 0
    assert rows.loc["dream0[defaults]", "clusterings_timed"] == 0  # interval 10: none in iterations 1-2


def test_bench_kmeans_scores_picks_against_kmeanspp():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import bench_kmeans
    finally:
        sys.path.pop(0)
    import numpy as np

    g = np.random.default_rng(0)
    xs = [g.normal(size=(40, 8)).astype(np.float32) for _ in range(3)]
    rows = {r["backend"]: r for r in bench_kmeans.candidate_rows(xs, 8, seed=0)}
    assert set(rows) == set(bench_kmeans.CANDIDATE_SETTINGS)
    ref = rows["torch k-means++"]
    assert ref["picks_agree_with_kmeanspp"] == 1.0 and ref["inertia_vs_kmeanspp"] == 1.0
    assert rows["faiss k-means++"]["picks_agree_with_kmeanspp"] == 1.0  # same init, same Lloyd steps
    assert all(0 <= r["picks_agree_with_kmeanspp"] <= 1 and r["cpu_s"] >= 0 for r in rows.values())
    assert rows["torch random (official)"]["niter"] == "<=100 tol=0.0001"


def _bench(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / name), *args], capture_output=True, text=True,
                          timeout=900)


def test_generative_compare_pairs_seeds_and_says_whether_the_interval_excludes_zero(tmp_path):
    def csv(gl: list[float]) -> Path:
        rows = []
        for seed, (dim_acc, gl_acc) in enumerate(zip([0.70, 0.71, 0.69], gl)):
            for method, acc in (("dim", dim_acc), ("global_local", gl_acc)):
                rows.append({"method": method, "ipc": 10, "seed": seed, "eval_kind": "fixed", "protocol": "dc300",
                             "acc_mean__convnet3": acc, "accs__convnet3": "+".join([str(acc)] * 5)})
        rows.append({"method": "dim", "ipc": 1, "seed": 0, "eval_kind": "fixed", "protocol": "dc300",
                     "acc_mean__convnet3": 0.5, "accs__convnet3": "0.5"})  # another ipc: ignored
        path = tmp_path / f"{gl[0]}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return path

    noisy = _bench("generative_compare.py", str(csv([0.72, 0.715, 0.71])))
    assert noisy.returncode == 0, noisy.stderr
    # diffs 2.0, 0.5, 2.0 points: mean 1.5, t(0.975, 2) * sd / sqrt(3) = 2.15
    assert "mean paired difference +1.50 points, 95 % t-interval [-0.65, +3.65] over 3 seeds; not resolved" in noisy.stdout
    steady = _bench("generative_compare.py", str(csv([0.72, 0.731, 0.709])))
    assert "[+1.75, +2.25] over 3 seeds; resolved" in steady.stdout and "| 1 | 71.00 | 5 | 73.10 | 5 | +2.10 |" in steady.stdout
    one = pd.read_csv(csv([0.72, 0.731, 0.709]))
    one[one["seed"] == 0].to_csv(tmp_path / "one.csv", index=False)
    refused = _bench("generative_compare.py", str(tmp_path / "one.csv"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1


def test_generative_benches_run(tmp_path):
    """bench_gan, pilot_generative and alexnet_probe on digits at toy sizes."""
    import torch

    from hpcdd.data import load_dataset
    from hpcdd.generative.nets import build_generator
    from hpcdd.generative.source import GeneratorSource

    gan = _bench("bench_gan.py", "--widths", "8", "--steps", "1", "--warmup", "0", "--dataset", "digits",
                 "--threads", "1", "--out", str(tmp_path / "gan.csv"))
    assert gan.returncode == 0, gan.stderr
    assert set(pd.read_csv(tmp_path / "gan.csv")["precision"]) == {"fp32", "bf16"}
    pilot = _bench("pilot_generative.py", "--dataset", "digits", "--width", "8", "--warmup-batches", "1", "--steps", "1",
                   "--nets", "convnet3", "--ipcs", "2", "--kinds", "resample", "--epochs", "1",
                   "--out", str(tmp_path / "pilot.csv"))
    assert pilot.returncode == 0, pilot.stderr
    assert len(pd.read_csv(tmp_path / "pilot.csv")) == 3 and len(pd.read_csv(tmp_path / "pilot_eval.csv")) == 2
    info = load_dataset("digits").info
    G = build_generator(10, 1, 28, width=8, generator=torch.Generator().manual_seed(0))
    state = GeneratorSource(G, {"num_classes": 10, "channels": 1, "im_size": 28, "width": 8}, 10, 100,
                            info.mean, info.std).state_dict()
    torch.save(state, tmp_path / "generator.pt")
    probe = _bench("alexnet_probe.py", str(tmp_path / "generator.pt"), "--dataset", "digits", "--ipc", "2",
                   "--models", "1", "--epochs", "1", "--test", "50", "--variants", "matched",
                   "--out", str(tmp_path / "probe.csv"))
    assert probe.returncode == 0, probe.stderr
    rows = pd.read_csv(tmp_path / "probe.csv")
    assert set(zip(rows["net"], rows["set"], rows["variant"])) == {
        (n, s, v) for n in ("alexnet", "convnet3") for s, v in (("real", "as-is"), ("generated", "matched"))}


def test_bench_ensemble_runs(tmp_path):
    """Timing and equivalence modes on digits, one tiny setting each."""
    common = [sys.executable, str(REPO / "bench" / "bench_ensemble.py"), "--dataset", "digits", "--archs", "mlp",
              "--n", "2"]
    out, equiv = tmp_path / "ens.csv", tmp_path / "equiv.csv"
    proc = subprocess.run([*common, "--threads", "1", "--epochs", "1", "--warmup", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert set(rows["variant"]) == {"one-by-one", "ensemble", "vmap"} and (rows["cpu_s_per_model_epoch"] > 0).all()
    proc = subprocess.run([*common, "--equivalence", "1", "--equivalence-out", str(equiv)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(equiv)["max_diff_points"].between(0, 1).all()  # 1 epoch: rounding at most


def test_bench_scaling_runs(tmp_path):
    """1 and 2 real processes and the one-process split, on digits (the committed rows: Fashion-MNIST)."""
    out = tmp_path / "scaling.csv"
    for extra in (["--layouts", "1x1,2x1"], ["--split"]):
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_scaling.py"), "--dataset", "digits",
                               "--ipc", "1", "--iters", "1", "--warmup", "0", "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert list(rows["layout"]) == ["1x1", "2x1", "split"] and (rows["sec_per_iter"] > 0).all()
    assert rows["sec_sampling_aug"].iloc[-1] > 0 and rows["sec_matching"].iloc[-1] > 0
