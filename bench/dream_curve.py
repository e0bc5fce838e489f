"""DREAM vs random sampling: test accuracy against distillation iterations (issue 13).

Reads the runs of ``launch/dream_fmnist.yaml`` (or any runs with ``exec.eval_points`` quick
evaluations and both samplers): for each method, the quick-evaluation curve of each sampler
(one ConvNet3, 100 epochs, at evenly spaced iterations), the final evaluation, the distillation
seconds, and

* ``iters_to_random_final``: the first logged iteration at which DREAM's quick-eval accuracy
  reaches random sampling's at the end of its budget (none: never within the budget);
* ``speedup_iters``: random's budget / that iteration (the paper claims at least 8x);
* ``wall_ratio``: DREAM's distillation seconds / random's (DREAM's clustering costs time), and
  ``wall_ratio_to_reach``: DREAM's seconds up to ``iters_to_random_final`` (pro rata) / random's.

Writes ``results/dream_curve.csv`` (one row per curve point, the summary columns repeated per
method) and ``results/dream_curve.png``.

    python bench/dream_curve.py runs/dream [--out results/dream_curve]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import pandas as pd  # noqa: E402

from hpcdd.io import atomic_write_text, read_jsonl  # noqa: E402
from hpcdd.report.aggregate import aggregate, to_csv_text  # noqa: E402
from hpcdd.report.plots import save_figure  # noqa: E402
from hpcdd.rundir import METRICS  # noqa: E402


def curves(runs_dir: Path) -> pd.DataFrame:
    """One row per (run, quick evaluation), with the run's method, sampler and final accuracy."""
    df, _ = aggregate([runs_dir])
    rows = []
    for _, r in df.iterrows():
        if r["method"] == "random":
            continue
        run_dir = Path(r["run_dir"]).parent.parent  # RUN/eval/<eval_id>/ -> RUN
        for m in read_jsonl(run_dir / METRICS):
            if "eval_acc" in m:
                rows.append({"method": r["method"], "sampler": r["sampler"], "seed": r["seed"], "it": int(m["it"]),
                             "quick_acc": float(m["eval_acc"]), "iterations": int(r["iterations"]),
                             "final_acc_mean": r["acc_mean"], "final_acc_std": r["acc_std"],
                             "protocol": r["protocol"], "distill_seconds": float(r["distill_seconds"]),
                             "run_id": r["run_id"]})
    if not rows:
        raise SystemExit(f"no quick evaluations under {runs_dir}: run the grid with exec.eval_points")
    out = pd.DataFrame(rows).drop_duplicates(["run_id", "it"], keep="last")
    return out.sort_values(["method", "sampler", "it"]).reset_index(drop=True)


def summarise(c: pd.DataFrame) -> pd.DataFrame:
    """Per method: how soon DREAM reaches random's final quick-eval accuracy, and at what cost."""
    rows = []
    if c["seed"].nunique() > 1:
        raise SystemExit(f"runs of several seeds ({sorted(c['seed'].unique())}): summarise one seed at a time")
    for method, g in c.groupby("method"):
        rnd, drm = g[g["sampler"] == "random"], g[g["sampler"] == "dream"]
        if rnd.empty or drm.empty:
            continue
        target = rnd.loc[rnd["it"].idxmax(), "quick_acc"]
        budget = int(rnd["iterations"].iloc[0])
        # iteration 0 is the shared initialisation (both samplers start from the same images)
        reached = drm[(drm["it"] > 0) & (drm["quick_acc"] >= target)]
        first = int(reached["it"].min()) if not reached.empty else None
        sec_r, sec_d = rnd["distill_seconds"].iloc[0], drm["distill_seconds"].iloc[0]
        rows.append({"method": method, "random_final_quick_acc": target,
                     "dream_final_quick_acc": drm.loc[drm["it"].idxmax(), "quick_acc"],
                     "iters_to_random_final": first,
                     "speedup_iters": (budget / first) if first is not None else None,
                     "wall_ratio": sec_d / sec_r,
                     "wall_ratio_to_reach": (sec_d * first / budget) / sec_r if first is not None else None})
    return pd.DataFrame(rows)


def plot(c: pd.DataFrame) -> Figure:
    methods = sorted(c["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for sampler, style in (("random", "o-"), ("dream", "s-")):
            g = c[(c["method"] == method) & (c["sampler"] == sampler)]
            if not g.empty:
                ax.plot(g["it"], 100 * g["quick_acc"], style, label=sampler, markersize=4)
        ax.set_title(method.upper())
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%), 1 ConvNet3, 100 epochs")
    axes[0][-1].legend(title="sampler")
    fig.suptitle("Fashion-MNIST, ipc 10: random vs DREAM sampling", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_dir", type=Path)
    p.add_argument("--out", default="results/dream_curve", help="output stem (.csv, .png)")
    args = p.parse_args(argv)
    c = curves(args.runs_dir)
    s = summarise(c)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    table = c.merge(s, on="method", how="left")
    table["command"] = "python bench/dream_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table["commit"], table["host"] = commit, platform.node()
    atomic_write_text(f"{args.out}.csv", to_csv_text(table))
    save_figure(plot(c), args.out)
    print(s.to_string(index=False))
    print(f"wrote {args.out}.csv and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
