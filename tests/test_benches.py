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


def test_dream_curve_summarises_random_vs_dream(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import dream_curve
    finally:
        sys.path.pop(0)
    exe = dataclasses.replace(QUIET, eval_points=2)
    for sampler, extra in (("random", {}), ("dream", {"interval": 2})):
        run_one(tiny(sampler=sampler, iterations=4, batch_real=8, **extra), tmp_path / "runs" / sampler, exe,
                evals=[EvalConfig(epochs=1, n=1)])
    stem = tmp_path / "curve"
    assert dream_curve.main([str(tmp_path / "runs"), "--out", str(stem)]) == 0
    table = pd.read_csv(f"{stem}.csv")
    assert set(table["sampler"]) == {"random", "dream"} and sorted(set(table["it"])) == [0, 2, 4]
    assert (table["wall_ratio"] > 0).all() and Path(f"{stem}.png").stat().st_size > 0


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
