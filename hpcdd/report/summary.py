"""One-run summaries for the CLI: the result table printed after a run, and ``hpcdd show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hpcdd.errors import RunDirError
from hpcdd.io import try_load_json


def result_table(row: dict[str, Any]) -> str:
    """A small Markdown table of one result row: one line per evaluation model."""
    lines = []
    for arch in row.get("eval_models", []):
        mean, std = row.get(f"acc_mean__{arch}"), row.get(f"acc_std__{arch}")
        if mean is None:
            continue
        lines.append({
            "method": row["method"], "dataset": row["dataset"], "ipc": row["ipc"],
            "train net": row["net"], "eval net": arch, "protocol": row["protocol"],
            "acc (%)": f"{100 * mean:.2f} ± {100 * std:.2f}", "n": len(row.get(f"accs__{arch}", [])),
            "distill s": row.get("distill_seconds"), "eval s": row.get("eval_seconds"),
        })
    table = pd.DataFrame(lines).to_markdown(index=False)
    return f"run {row['run_id']}  (± is the std over the n evaluation models, ddof=0)\n{table}"


def show_run(run_dir: Path, output: str | None = None) -> str:
    """Text for ``hpcdd show``; also writes the PNG grid of the synthetic images."""
    from hpcdd.report.images import save_image_grid
    from hpcdd.run import is_done, load_synset, read_config

    cfg = read_config(run_dir)
    if cfg is None:
        raise RunDirError(f"{run_dir} is not an hpcdd run dir (no config.yaml)")
    state = load_synset(run_dir)
    info = state.get("info") or {}
    png = Path(output) if output else run_dir / "synset.png"
    save_image_grid(state["images"], state["labels"], info.get("mean", (0.0,)), info.get("std", (1.0,)), png)
    head = result_table(try_load_json(run_dir / "result.json")) if is_done(run_dir) else (
        f"run {run_dir.name}: distilled ({cfg.method}, {cfg.dataset}, ipc {cfg.ipc}) but not evaluated; "
        f"run: hpcdd evaluate {run_dir}")
    return f"{head}\nimage grid: {png}"
