"""DREAM vs random sampling: test accuracy against distillation iterations, over seeds (issue 19).

Reads finished runs with quick evaluations (``exec.eval_points`` / ``eval_at``, ``eval_point_n``
models of one ConvNet3 each, 100 epochs; see ``launch/dream_curve_dm.yaml`` and
``launch/dream_curve_dc.yaml``) of both samplers under one or more runs dirs. A run's final
evaluation is its last point when it uses the same protocol (``dc100``, the same model) and no
quick evaluation was logged at the end. Per method it reports:

* ``random_final``: random sampling's accuracy at the end of its budget (mean over seeds).
* ``reach_iters``: the iterations DREAM needs to reach it, where DREAM's mean curve over seeds
  first crosses it (linear between logged points, never before the first point after 0), and
  per seed (against the same seed's random final, paired): mean, min and max over the seeds that
  reach it, and how many do (``reached`` of ``seeds``). ``speedup`` = random's budget / reach.
* ``wall_to_reach_s``: DREAM's distillation seconds up to ``reach_iters`` (its build, e.g.
  ``init: kmeans``, plus the per-iteration loop time pro rata), against ``random_wall_s``, random's
  seconds to its final accuracy (its whole budget): ``wall_gain`` = their ratio (> 1: DREAM saves
  wall time). Both come from each run's own clocks (mean over seeds); runs that shared a busy
  machine give noisy seconds, ``bench/bench_dream.py`` gives the clean per-iteration ratio.

Writes ``OUT.csv`` (one row per run and point), ``OUT_summary.csv`` (one row per method) and
``OUT.png``/``.pdf`` (per method: mean and min-max band over seeds per sampler; random's final as
a dashed line; integer iteration ticks; one legend). ``--csv`` re-reads such a points file instead
of runs dirs (also the issue-13 version's, with ``quick_acc``, one model per point and no ipc
column: give ``--ipc``).

    python bench/dream_curve.py runs/dream_curve_dm runs/dream_curve_dc --out results/dream_curve
    python bench/dream_curve.py --csv results/dream_curve.csv --ipc 10 --out results/dream_curve
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
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hpcdd.io import atomic_write_text, read_jsonl  # noqa: E402
from hpcdd.report.aggregate import aggregate, to_csv_text  # noqa: E402
from hpcdd.report.plots import save_figure  # noqa: E402
from hpcdd.rundir import METRICS  # noqa: E402

QUICK_EPOCHS = 100
SAMPLERS = ("random", "dream")
STYLE = {"random": ("tab:blue", "o"), "dream": ("tab:orange", "s")}


def _seconds(r: pd.Series, key: str) -> float:
    value = r.get(key)
    return float(value) if value is not None and pd.notna(value) else 0.0


def curves(runs_dirs: list[Path]) -> pd.DataFrame:
    """One row per (run, point): quick evaluations, and the final evaluation as the last point."""
    df, _ = aggregate(runs_dirs)
    df = df[df["sampler"].isin(SAMPLERS) & (df["iterations"].fillna(0) > 0)]
    rows = []
    for run_id, g in df.groupby("run_id"):
        r = g.iloc[0]
        run_dir = Path(r["run_dir"]).parent.parent  # RUN/eval/<eval_id>/ -> RUN
        loop = _seconds(r, "match_seconds") + _seconds(r, "sampler_embed_seconds") + _seconds(r, "sampler_kmeans_seconds")
        total = float(r["distill_seconds"])
        base = {"method": r["method"], "sampler": r["sampler"], "ipc": int(r["ipc"]), "seed": int(r["seed"]), "run_id": run_id,
                "iterations": int(r["iterations"]), "distill_seconds": total,
                "build_seconds": total - loop if loop else 0.0, "loop_seconds": loop or total}
        points = {}
        for m in read_jsonl(run_dir / METRICS):
            if "eval_acc" in m and m.get("eval_epochs", QUICK_EPOCHS) == QUICK_EPOCHS:
                accs = m.get("eval_accs") or [m["eval_acc"]]
                points[int(m["it"])] = (float(m["eval_acc"]), len(accs), "quick")
        final = g[(g["protocol"] == f"dc{QUICK_EPOCHS}")]
        if base["iterations"] not in points and not final.empty:
            f = final.iloc[0]
            points[base["iterations"]] = (float(f["acc_mean"]), int(f["eval_n"]), "final")
        rows += [{**base, "it": it, "acc": acc, "models": n, "source": src} for it, (acc, n, src) in points.items()]
    if not rows:
        raise SystemExit(f"no quick evaluations under {', '.join(map(str, runs_dirs))}: run the grid with "
                         "exec.eval_points or exec.eval_at")
    return pd.DataFrame(rows).sort_values(["method", "sampler", "seed", "it"]).reset_index(drop=True)


POINT_COLUMNS = ["method", "sampler", "ipc", "seed", "run_id", "iterations", "distill_seconds", "build_seconds",
                 "loop_seconds", "it", "acc", "models", "source"]


def load_points(path: Path, ipc: int | None) -> pd.DataFrame:
    """The points of a CSV this script wrote (or its issue-13 version wrote)."""
    c = pd.read_csv(path).rename(columns={"quick_acc": "acc"})
    for key, value in (("models", 1), ("source", "quick"), ("build_seconds", 0.0), ("ipc", ipc)):
        if key not in c:
            c[key] = value
    if "loop_seconds" not in c:
        c["loop_seconds"] = c["distill_seconds"] - c["build_seconds"]
    if c["ipc"].isna().any():
        raise SystemExit(f"{path} has no ipc column: give --ipc")
    return c[POINT_COLUMNS].astype({"ipc": int}).sort_values(["method", "sampler", "seed", "it"]).reset_index(drop=True)


def crossing(its: np.ndarray, accs: np.ndarray, target: float) -> float | None:
    """The first iteration > 0 at which the curve reaches ``target``: linear between two logged
    points after 0, else the first such point itself (never before it)."""
    for i, (it, acc) in enumerate(zip(its, accs)):
        if it <= 0 or acc < target:
            continue
        if i == 0 or its[i - 1] <= 0:
            return float(it)
        return float(its[i - 1] + (target - accs[i - 1]) * (it - its[i - 1]) / (acc - accs[i - 1]))
    return None


def _mean_curve(g: pd.DataFrame) -> pd.Series:
    """The mean over seeds at the iterations every seed logged."""
    seeds = g["seed"].nunique()
    counts = g.groupby("it")["acc"].count()
    return g.groupby("it")["acc"].mean()[counts == seeds]


def _secs(x: float) -> float:
    """Seconds to 3 significant digits: a fixed number of decimals reads 0.0 for the short builds of a
    fast machine's tiny runs."""
    return float(f"{x:.3g}")


def summarise(c: pd.DataFrame) -> pd.DataFrame:
    """Per method: how soon DREAM reaches random sampling's final accuracy, and at what wall cost."""
    out = []
    for method, g in c.groupby("method"):
        rnd, drm = g[g["sampler"] == "random"], g[g["sampler"] == "dream"]
        if rnd.empty or drm.empty:
            continue
        budgets = set(rnd["iterations"]) | set(drm["iterations"])
        if len(budgets) > 1:
            raise SystemExit(f"{method}: runs with different budgets {sorted(budgets)}; give one budget per method")
        budget = budgets.pop()
        finals = rnd[rnd["it"] == budget].set_index("seed")["acc"]
        target = float(finals.mean())
        mean = _mean_curve(drm)
        pooled = crossing(mean.index.to_numpy(), mean.to_numpy(), target)
        per_seed = []
        for seed, s in drm.groupby("seed"):
            if seed in finals.index:
                per_seed.append(crossing(s["it"].to_numpy(), s["acc"].to_numpy(), float(finals[seed])))
        reached = [x for x in per_seed if x is not None]
        runs = lambda x: x.drop_duplicates("run_id")  # noqa: E731
        per_it = runs(drm)["loop_seconds"].mean() / budget
        build = runs(drm)["build_seconds"].mean()
        random_wall = runs(rnd)["distill_seconds"].mean()
        wall_to_reach = build + per_it * pooled if pooled is not None else None
        out.append({
            "method": method, "budget": budget, "seeds_random": rnd["seed"].nunique(), "seeds_dream": drm["seed"].nunique(),
            "models_per_point": int(g["models"].min()), "random_final": round(target, 4),
            "random_final_std": round(float(finals.std(ddof=0)), 4),
            "dream_final": round(float(mean.iloc[-1]), 4) if mean.index[-1] == budget else None,
            "reach_iters": None if pooled is None else round(pooled, 1),
            "speedup": None if pooled is None else round(budget / pooled, 2),
            "reach_iters_seed_mean": round(float(np.mean(reached)), 1) if reached else None,
            "reach_iters_seed_min": round(min(reached), 1) if reached else None,
            "reach_iters_seed_max": round(max(reached), 1) if reached else None,
            "reached": len(reached), "seeds_paired": len(per_seed),
            "dream_s_per_iter": _secs(per_it), "random_s_per_iter": _secs(runs(rnd)["loop_seconds"].mean() / budget),
            "dream_build_s": _secs(build), "random_wall_s": _secs(random_wall),
            "wall_to_reach_s": None if wall_to_reach is None else _secs(wall_to_reach),
            "wall_gain": None if wall_to_reach is None else round(random_wall / wall_to_reach, 2),
        })
    return pd.DataFrame(out)


def plot(c: pd.DataFrame, summary: pd.DataFrame | None = None) -> Figure:
    """Per method: mean and min-max band over seeds per sampler, random's final as a dashed line."""
    methods = sorted(c["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4.4 * len(methods), 3.6), squeeze=False,
                             layout="constrained")
    handles = {}
    for ax, method in zip(axes[0], methods):
        g = c[c["method"] == method]
        for sampler in SAMPLERS:
            s = g[g["sampler"] == sampler]
            if s.empty:
                continue
            color, marker = STYLE[sampler]
            stats = s.groupby("it")["acc"].agg(["mean", "min", "max"]) * 100
            seeds = s["seed"].nunique()
            (line,) = ax.plot(stats.index, stats["mean"], marker=marker, color=color, markersize=3.5, linewidth=1.4)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.18, linewidth=0)
            handles[sampler] = (line, f"{sampler}: mean over {seeds} seeds, band min-max" if seeds > 1
                                else f"{sampler} (1 seed)")
        row = None if summary is None or summary.empty else summary[summary["method"] == method]
        if row is not None and not row.empty:
            ax.axhline(100 * row["random_final"].iloc[0], color="tab:blue", linestyle="--", linewidth=0.9)
        ax.set_title(f"{method.upper()}, ipc {_ipc_label(g)}", fontsize=10)
        ax.set_xlabel("distillation iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    models = int(c["models"].min())
    fig.suptitle(f"Fashion-MNIST: random vs DREAM sampling; ConvNet3, {QUICK_EPOCHS} epochs, "
                 f"{models} model{'s' * (models > 1)} per point", fontsize=10)
    dashed = matplotlib.lines.Line2D([], [], color="tab:blue", linestyle="--", linewidth=0.9)
    labels = [h for h in handles.values()] + [(dashed, "random's final accuracy (mean)")]
    fig.legend([h for h, _ in labels], [t for _, t in labels], loc="outside lower center", ncol=len(labels),
               fontsize=8, frameon=False)
    return fig


def _ipc_label(g: pd.DataFrame) -> str:
    return "/".join(map(str, sorted(set(g["ipc"]))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_dirs", type=Path, nargs="*", help="runs dirs holding both samplers' runs")
    p.add_argument("--csv", type=Path, default=None, help="re-read a points CSV instead of runs dirs")
    p.add_argument("--ipc", type=int, default=None, help="with --csv: the ipc of a CSV without an ipc column")
    p.add_argument("--out", default="results/dream_curve", help="output stem (.csv, _summary.csv, .png, .pdf)")
    args = p.parse_args(argv)
    if bool(args.runs_dirs) == (args.csv is not None):
        p.error("give runs dirs or --csv")
    c = curves(args.runs_dirs) if args.csv is None else load_points(args.csv, args.ipc)
    s = summarise(c)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = "python bench/dream_curve.py " + " ".join(map(str, sys.argv[1:] if argv is None else argv))
    for table in (c, s):
        table["command"], table["commit"], table["host"] = command, commit, platform.node()
    atomic_write_text(f"{args.out}.csv", to_csv_text(c))
    atomic_write_text(f"{args.out}_summary.csv", to_csv_text(s))
    save_figure(plot(c, s), args.out)
    print(s.drop(columns=["command", "commit", "host"]).to_string(index=False))
    print(f"wrote {args.out}.csv, {args.out}_summary.csv and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
