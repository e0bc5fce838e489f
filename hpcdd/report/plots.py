"""Figures: a metric against any config column, and training curves from metrics.jsonl.

Everything draws on a ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
state); :func:`save_figure` writes a PNG and a PDF with the same stem through the atomic helpers.

* :func:`xy_summary` + :func:`plot_xy`: mean with std error bars *over seeds* (ddof=1), one line
  per ``hue`` group. ``x`` can be any config column (``ipc``, a method hyper-parameter, ...),
  which also makes ablation plots.
* :func:`load_curves` + :func:`plot_curves`: evaluation accuracy and loss against iteration from
  the runs' ``metrics.jsonl``; one line per config group (runs that differ only in ``seed``),
  averaged over seeds with a +-std band.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hpcdd.errors import ConfigError
from hpcdd.io import atomic_write_bytes, read_jsonl
from hpcdd.report.select import SEED, config_columns, prepare, summarize
from hpcdd.report.tables import is_accuracy

FIG_FORMATS = ("png", "pdf")


def figure_stem(path: str | os.PathLike[str]) -> Path:
    """``fig.png`` / ``fig.pdf`` / ``fig`` -> ``fig`` (other suffixes are kept)."""
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() in (".png", ".pdf") else p


def save_figure(fig: Figure, stem: str | os.PathLike[str], dpi: int = 150) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically; returns both paths."""
    FigureCanvasAgg(fig)
    base = figure_stem(stem)
    out = []
    for fmt in FIG_FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        path = base.with_name(f"{base.name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def _label(keys: Sequence[str], values: tuple) -> str:
    if not keys:
        return "all runs"
    return " ".join(f"{k}={v}" for k, v in zip(keys, values))


def xy_summary(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: Sequence[str] = (),
    *,
    protocol: str | None = None,
    where: Iterable[str] = (),
) -> pd.DataFrame:
    """mean, std (ddof=1) and n of ``y`` over seeds for each (hue..., x); same checks as tables."""
    keys = [*hue, x]
    ignore = ("eval_models",) if "__" in y else ()
    data = prepare(df, keys, y, protocol=protocol, where=where, ignore=ignore)
    out = summarize(data, keys, y)
    out = out[out["n"] > 0].reset_index(drop=True)
    if out.empty:
        raise ConfigError(f"the selected runs have no value for {y!r}")
    protocols = sorted(map(str, data["protocol"].dropna().unique())) if "protocol" in data else []
    out.attrs["protocol"] = ", ".join(protocols)
    return out


def _use_log(values: np.ndarray, xscale: str) -> bool:
    if xscale in ("linear", "log"):
        return xscale == "log"
    if xscale != "auto":
        raise ConfigError(f"--xscale must be auto, linear or log, got {xscale!r}")
    return bool(len(values) and values.min() > 0 and values.max() / values.min() >= 20)


def plot_xy(
    summary: pd.DataFrame, x: str, y: str, hue: Sequence[str] = (), xscale: str = "auto"
) -> Figure:
    """Error-bar plot of a :func:`xy_summary` table (accuracies in percent)."""
    scale = 100.0 if is_accuracy(y) else 1.0
    numeric = pd.api.types.is_numeric_dtype(summary[x]) and not pd.api.types.is_bool_dtype(
        summary[x]
    )
    cats = sorted(summary[x].astype(str).unique()) if not numeric else []
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    groups = summary.groupby(list(hue), dropna=False, sort=True) if hue else [((), summary)]
    for key, g in groups:
        g = g.sort_values(x)
        xs = g[x].to_numpy(float) if numeric else np.array([cats.index(str(v)) for v in g[x]])
        key = key if isinstance(key, tuple) else (key,)
        ax.errorbar(
            xs,
            g["mean"].to_numpy(float) * scale,
            yerr=np.nan_to_num(g["std"].to_numpy(float) * scale, nan=0.0),
            marker="o",
            capsize=3,
            label=_label(hue, key),
        )
    if numeric:
        values = np.unique(summary[x].to_numpy(float))
        if _use_log(values, xscale):
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values])
    else:
        ax.set_xticks(range(len(cats)), cats)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)" if scale != 1.0 else y)
    ax.grid(True, alpha=0.3)
    if hue:
        ax.legend(fontsize="small")
    ns = sorted(set(summary["n"]))
    n_text = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    proto = summary.attrs.get("protocol", "")
    fig.text(
        0.01, 0.005,
        f"{'protocol ' + proto + '; ' if proto else ''}mean ± std over seeds (ddof=1), {n_text} "
        "runs per point; single-run points have no bar",
        fontsize=7, ha="left", va="bottom",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def load_curves(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(eval rows, loss rows) from each run's metrics.jsonl, tagged with the run's row index.

    Eval rows have columns ``row, it, eval_acc, eval_model, eval_epochs`` (-1 if not logged);
    loss rows ``row, it, loss``.
    A torn last line is skipped; runs without a metrics file are skipped.
    """
    if "run_dir" not in df.columns:
        raise ConfigError("curves need run dirs: give runs directories, not a results CSV")
    evals: list[tuple] = []
    losses: list[tuple] = []
    for row, run_dir in zip(df.index, df["run_dir"]):
        for rec in read_jsonl(os.path.join(str(run_dir), "metrics.jsonl")):
            it = rec.get("it")
            if not isinstance(it, (int, float)):
                continue
            if isinstance(rec.get("eval_acc"), (int, float)):
                ep = rec.get("eval_epochs")
                evals.append(
                    (row, it, float(rec["eval_acc"]), str(rec.get("eval_model", "")), ep)
                )
            if isinstance(rec.get("loss"), (int, float)):
                losses.append((row, it, float(rec["loss"])))
    ev = pd.DataFrame(evals, columns=["row", "it", "eval_acc", "eval_model", "eval_epochs"])
    ev["eval_epochs"] = ev["eval_epochs"].fillna(-1).astype(int)
    lo = pd.DataFrame(losses, columns=["row", "it", "loss"])
    if ev.empty and lo.empty:
        raise ConfigError("no metrics.jsonl rows (it + loss or eval_acc) found in these runs")
    return ev, lo


def curve_groups(df: pd.DataFrame) -> tuple[list[str], pd.Series]:
    """Config columns (except seed) that vary across runs, and each run's group label."""
    varying = [c for c in config_columns(df) if c != SEED and df[c].nunique(dropna=False) > 1]
    if not varying:
        return [], pd.Series("all runs", index=df.index)
    labels = df[varying].astype(str).apply(
        lambda r: " ".join(f"{k}={v}" for k, v in zip(varying, r)), axis=1
    )
    return varying, labels


def _draw_band(ax, frame: pd.DataFrame, value: str, scale: float, label: str) -> None:
    stats = frame.groupby("it")[value].agg(["mean", "std", "count"]).reset_index()
    its = stats["it"].to_numpy(float)
    mean = stats["mean"].to_numpy(float) * scale
    (line,) = ax.plot(its, mean, label=label, marker="o" if len(its) < 30 else None, ms=3)
    std = np.nan_to_num(stats["std"].to_numpy(float) * scale, nan=0.0)
    if (stats["count"] > 1).any():
        ax.fill_between(its, mean - std, mean + std, alpha=0.2, color=line.get_color())


def plot_curves(df: pd.DataFrame, evals: pd.DataFrame, losses: pd.DataFrame) -> Figure:
    """Left: eval accuracy (%) vs iteration; right: loss vs iteration; mean ± std over seeds."""
    _, labels = curve_groups(df)
    fig = Figure(figsize=(11.0, 4.2))
    ax_acc, ax_loss = fig.subplots(1, 2)
    ev = evals.assign(group=labels.reindex(evals["row"]).to_numpy())
    tag_model = ev["eval_model"].nunique() > 1
    tag_epochs = ev["eval_epochs"].nunique() > 1  # quick evals and final evals differ
    for (group, model, epochs), frame in ev.groupby(
        ["group", "eval_model", "eval_epochs"], sort=True
    ):
        tags = ([model] if tag_model else []) + ([f"{epochs} ep"] if tag_epochs else [])
        label = f"{group} [{', '.join(tags)}]" if tags else str(group)
        _draw_band(ax_acc, frame, "eval_acc", 100.0, label)
    lo = losses.assign(group=labels.reindex(losses["row"]).to_numpy())
    for group, frame in lo.groupby("group", sort=True):
        _draw_band(ax_loss, frame, "loss", 1.0, str(group))
    for ax, title, ylabel, frame in (
        (ax_acc, "evaluation accuracy", "eval_acc (%)", ev),
        (ax_loss, "distillation loss", "loss", lo),
    ):
        ax.set_title(title)
        ax.set_xlabel("iteration (it)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if frame.empty:
            ax.text(0.5, 0.5, "no rows in metrics.jsonl", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize="x-small")
    fig.text(
        0.01, 0.005, "lines: mean over seeds; band: ± std over seeds (ddof=1)",
        fontsize=7, ha="left", va="bottom",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
