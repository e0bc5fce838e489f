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
    out = tmp_path / "dm.csv"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_dm.py"), "--iters", "1", "--warmup", "0",
                           "--variants", "per-class", "--out", str(out)], capture_output=True, text=True, timeout=900)
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
