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
