"""global_local against dim, paired by seed, from an aggregate CSV (``hpcdd aggregate``).

For one ipc, evaluation kind, protocol and evaluation net, each seed that both methods ran gives
one paired difference: mean accuracy of B's evaluation models minus A's (the two runs share the
pretraining, the seed and the evaluation models' seeds). Prints a Markdown table of the seeds, the
mean difference with its 95 % t-interval (n_seeds - 1 degrees of freedom), and whether it is
resolved (the interval excludes 0); ``--out`` also writes it to a file.

Usage: python bench/generative_compare.py results/generative_fmnist.csv [--ipc 10] [--kind fixed]
       [--protocol dc300] [--arch convnet3] [--a dim] [--b global_local] [--out results/X.md]
Exit 2 with one line when fewer than two seeds pair up or the rows are ambiguous.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def paired(df: pd.DataFrame, *, a: str, b: str, ipc: int, kind: str, arch: str,
           protocol: str | None) -> pd.DataFrame:
    """One row per seed that both methods ran: their mean accuracy, model counts, the difference."""
    import pandas as pd

    col = f"acc_mean__{arch}"
    if col not in df.columns:
        raise ValueError(f"no {col} column: no row evaluated {arch}")
    rows = df[df["method"].isin([a, b]) & (df["ipc"] == ipc) & (df["eval_kind"] == kind) & df[col].notna()]
    if protocol is not None:
        rows = rows[rows["protocol"] == protocol]
    if rows["protocol"].nunique() > 1:
        raise ValueError(f"rows of several protocols ({', '.join(sorted(rows['protocol'].unique()))}); "
                         "choose one with --protocol")
    dup = rows.duplicated(["method", "seed"], keep=False)
    if dup.any():
        raise ValueError(f"several rows for one method and seed ({len(rows[dup])} rows); narrow the CSV")
    counts = rows[f"accs__{arch}"].astype(str).str.count(r"\+") + 1
    rows = rows.assign(n_models=counts)
    side = {m: rows[rows["method"] == m].set_index("seed") for m in (a, b)}
    seeds = sorted(set(side[a].index) & set(side[b].index))
    out = pd.DataFrame({"seed": seeds,
                        a: [side[a].loc[s, col] for s in seeds], f"n_{a}": [side[a].loc[s, "n_models"] for s in seeds],
                        b: [side[b].loc[s, col] for s in seeds], f"n_{b}": [side[b].loc[s, "n_models"] for s in seeds]})
    out["diff"] = out[b] - out[a]
    return out


T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045)
"""Student's t 97.5 % quantiles for 1..29 degrees of freedom (no SciPy needed: the GPU box)."""


def interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % t-interval of the mean of the paired differences (n >= 2)."""
    n = len(diffs)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    t = T975[n - 2] if n - 2 < len(T975) else 1.96
    half = t * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def report(table: pd.DataFrame, a: str, b: str, label: str) -> str:
    mean, low, high = interval(list(table["diff"]))
    resolved = low > 0 or high < 0
    lines = [f"| seed | {a} (%) | models | {b} (%) | models | {b} - {a} (points) |", "|--:|--:|--:|--:|--:|--:|"]
    for r in table.itertuples(index=False):
        row = r._asdict()
        lines.append(f"| {row['seed']} | {100 * row[a]:.2f} | {row[f'n_{a}']} | {100 * row[b]:.2f} | "
                     f"{row[f'n_{b}']} | {100 * row['diff']:+.2f} |")
    verdict = ("resolved: the interval excludes 0" if resolved
               else "not resolved at this budget: the interval contains 0")
    lines.append("")
    lines.append(f"{label}: mean paired difference {100 * mean:+.2f} points, 95 % t-interval "
                 f"[{100 * low:+.2f}, {100 * high:+.2f}] over {len(table)} seeds; {verdict}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--kind", default="fixed")
    ap.add_argument("--protocol", default=None)
    ap.add_argument("--arch", default="convnet3")
    ap.add_argument("--a", default="dim")
    ap.add_argument("--b", default="global_local")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import pandas as pd

    try:
        table = paired(pd.read_csv(args.csv), a=args.a, b=args.b, ipc=args.ipc, kind=args.kind, arch=args.arch,
                       protocol=args.protocol)
    except (OSError, ValueError, KeyError) as e:
        print(f"generative_compare: {e}", file=sys.stderr)
        return 2
    if len(table) < 2:
        print(f"generative_compare: {len(table)} seed(s) pair {args.a} with {args.b}; need at least 2", file=sys.stderr)
        return 2
    label = f"{args.b} - {args.a}, ipc {args.ipc}, {args.kind}, {args.arch}"
    text = report(table, args.a, args.b, label)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
