"""Migrate result CSVs written before the pipeline change (commit 3010f07 and earlier: one flat
row per run, the old run ids) to today's identities and columns, without re-running anything.

    python bench/migrate_results.py results/fmnist_ipc10.csv [-o OUT]   # default: in place

Each old row's config keys (method, dataset, ipc, seed, iterations, net, sampler, init,
batch_real, lr_img, momentum_img, dsa, dsa_strategy, precision and the eval_* keys) are read as a
flat config, resolved by today's catalog, and the row gets today's ``run_id`` and ``eval_id``,
``eval_kind``/``eval_ipc``, and its columns in today's order (old columns kept after them; the
old id in ``run_id_v1``; config keys the resolved run does not have, e.g. a coreset's
``momentum_img``, are dropped). Measured values (accuracies, seconds, provenance) are copied
unchanged.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from hpcdd.catalog import flat_run, resolve_point
from hpcdd.config import eval_flat
from hpcdd.io import atomic_write_text
from hpcdd.report.aggregate import to_csv_text

KEYS = ("method", "dataset", "ipc", "seed", "iterations", "im_size", "net", "sampler", "init", "batch_real",
        "lr_img", "momentum_img", "dsa", "dsa_strategy", "precision", "eval_models", "eval_epochs", "eval_n",
        "eval_lr", "eval_batch", "eval_dsa")
LISTS = ("eval_models",)


def flat_config(row: pd.Series) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEYS:
        if key not in row.index:
            continue
        value = row[key]
        if isinstance(value, float) and math.isnan(value):
            continue  # empty in the CSV: the default (or a key the method lacks)
        if key in LISTS:
            value = str(value).split("+")
        elif hasattr(value, "item"):
            value = value.item()
        out[key] = value
    if out.get("method") in ("random", "herding", "kcenter"):  # coresets: no image optimiser keys
        for key in ("lr_img", "momentum_img", "init", "iterations", "sampler", "batch_real"):
            out.pop(key, None)
    return out


def migrate(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, row in df.iterrows():
        run, ev, rid, eid = resolve_point(flat_config(row), where=f"row {row['run_id']}")
        new = {"run_id": rid, "eval_id": eid, "protocol": row["protocol"], **flat_run(run),
               **{k: "+".join(v) if isinstance(v, (list, tuple)) else v for k, v in eval_flat(ev).items()}}
        new.update({k: v for k, v in row.items() if k not in new and k != "run_id" and k not in KEYS})
        new["run_id_v1"] = row["run_id"]
        rows.append(new)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv")
    p.add_argument("-o", "--output")
    args = p.parse_args(argv)
    df = pd.read_csv(args.csv, dtype={"run_id": str})
    if "eval_id" in df.columns:
        print(f"{args.csv}: already has eval_id; nothing to do", file=sys.stderr)
        return 0
    out = migrate(df)
    atomic_write_text(Path(args.output or args.csv), to_csv_text(out))
    print(out[["run_id_v1", "run_id", "eval_id", "method", "protocol", "acc_mean"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
