"""One-run summaries for the CLI: the result table printed after a run, and ``hpcdd show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcdd.errors import ConfigError, RunDirError


def result_table(row: dict[str, Any]) -> str:
    """A small Markdown table of one evaluation's row: one line per evaluation model."""
    from tabulate import tabulate

    lines = []
    for arch in row.get("eval_models", []):
        mean, std = row.get(f"acc_mean__{arch}"), row.get(f"acc_std__{arch}")
        if mean is None:
            continue
        lines.append([row["method"], row["dataset"], row.get("ipc"), row["net"], arch, row["protocol"],
                      f"{100 * mean:.2f} ± {100 * std:.2f}", len(row.get(f"accs__{arch}", [])),
                      row.get("distill_seconds"), row.get("eval_seconds")])
    headers = ["method", "dataset", "ipc", "train net", "eval net", "protocol", "acc (%)", "n",
               "distill s", "eval s"]
    table = tabulate(lines, headers=headers, tablefmt="github", disable_numparse=True)
    return (f"run {row['run_id']} eval {row.get('eval_id', '-')}  "
            f"(± is the std over the n evaluation models, ddof=0)\n{table}")


def show_run(run_dir: Path, output: str | None = None, *, ipc: int | None = None, seed: int = 0,
             scale: int = 4, max_per_class: int | None = 10) -> str:
    """Text for ``hpcdd show``; also writes the PNG grid of the run's images (a generator run
    draws ``ipc`` per class from noise seeded by ``seed``)."""
    from hpcdd import rundir
    from hpcdd.imagegrid import save_image_grid
    from hpcdd.seeding import generator
    from hpcdd.artefact import load_source
    from hpcdd.specs import METHODS

    png = Path(output) if output else run_dir / rundir.PNG
    rundir.check_output(png, allow=(rundir.PNG,))
    cfg = rundir.read_config(run_dir)
    if cfg is None:
        raise RunDirError(f"{run_dir} is not an hpcdd run dir (no run.json / config.yaml)")
    if not rundir.is_done(run_dir):
        raise RunDirError(f"{run_dir} has not finished distilling; nothing to show yet")
    output_kind = METHODS.get(cfg.method).output
    source, state = load_source(rundir.artefact_path(run_dir, output_kind), output_kind)
    syn = source.sample(ipc or 10, generator(seed, "show"))
    info = state.get("info") or {}
    try:
        save_image_grid(syn.images, syn.labels, info.get("mean", (0.0,)), info.get("std", (1.0,)), png,
                        class_names=info.get("class_names"), scale=scale, max_per_class=max_per_class)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rows = [rundir.read_result(run_dir, eid) for eid in rundir.eval_ids(run_dir)
            if rundir.eval_done(run_dir, eid)]
    head = "\n\n".join(result_table(r) for r in rows if r) or (
        f"run {run_dir.name}: distilled ({cfg.method}, {cfg.dataset}) but not evaluated; "
        f"run: hpcdd evaluate {run_dir}")
    what = f"{ipc or 10} generated images per class (seed {seed})" if output_kind == "generator" else "synthetic set"
    return f"{head}\nimage grid ({what}): {png}"


def generate_synset(run_dir: Path, ipc: int, out: Path, *, seed: int = 0) -> tuple[Path, int]:
    """Draw ``ipc`` images per class from a generator run and save them as a synset file."""
    from hpcdd import rundir
    from hpcdd.io import atomic_torch_save
    from hpcdd.seeding import generator
    from hpcdd.artefact import load_source
    from hpcdd.specs import METHODS

    if ipc < 1:
        raise ConfigError(f"--ipc must be >= 1, got {ipc}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if out.exists():
        raise ConfigError(f"{out} exists; choose another --out")
    rundir.check_output(out)
    cfg = rundir.read_config(run_dir)
    if cfg is None or not rundir.is_done(run_dir):
        raise RunDirError(f"{run_dir} is not a finished hpcdd run dir")
    if METHODS.get(cfg.method).output != "generator":
        raise ConfigError(f"{run_dir} holds a fixed image set ({cfg.method}); only generator runs can draw new images")
    source, state = load_source(rundir.artefact_path(run_dir, "generator"), "generator")
    syn = source.sample(ipc, generator(seed, "generate"))
    atomic_torch_save(out, {**syn.state_dict(), "info": state.get("info"), "run_id": state.get("run_id"),
                            "ipc": ipc, "seed": seed})
    return out, len(syn.labels)
