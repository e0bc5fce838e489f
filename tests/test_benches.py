"""The benchmark scripts run (tiny settings): a broken bench is caught before its next real use."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd

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
