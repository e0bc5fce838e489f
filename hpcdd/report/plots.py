"""Figures: a metric against any config column, and training curves from metrics.jsonl.

Everything draws on a ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
state) and constrained layout; :func:`save_figure` writes a PNG and a PDF with the same stem
through the atomic helpers. Legends sit below the axes (never over the data), accuracies are in
percent like the tables, and the title names the dataset, net and protocol of the runs.

* :func:`xy_summary` + :func:`plot_xy`: mean with std error bars *over seeds* (ddof=1), one line
  per ``hue`` group, each group with its own marker and a small horizontal dodge so that equal
  points do not hide each other. ``x`` can be any config column (``ipc``, a method
  hyper-parameter, ...), which also makes ablation plots.
* :func:`load_curves` + :func:`plot_curves`: evaluation accuracy and loss against iteration from
  the runs' ``metrics.jsonl``; one colour per config group (runs that differ only in ``seed``),
  averaged over seeds with a +-std band. A panel without rows is left out (see
  :func:`curves_note`), so the figure never holds an empty panel.
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
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.scale import LogTransform, SymmetricalLogTransform
from matplotlib.ticker import MaxNLocator, ScalarFormatter
from matplotlib.transforms import IdentityTransform, Transform

from hpcdd.errors import ConfigError
from hpcdd.io import atomic_write_bytes, read_jsonl
from hpcdd.rundir import EVALS, METRICS
from hpcdd.report.select import SEED, config_columns, prepare, summarize
from hpcdd.report.tables import is_accuracy

FIG_FORMATS = ("png", "pdf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", ":", "-.")
TITLE_FIELDS = ("dataset", "net", "method", "ipc")
"""Config fields named in a figure title when they have one value and are not plotted."""


def figure_stem(path: str | os.PathLike[str]) -> Path:
    """``fig.png`` / ``fig.pdf`` / ``fig`` -> ``fig`` (other suffixes are kept)."""
    p = Path(path)
    return p.with_suffix("") if p.suffix.lower() in (".png", ".pdf") else p


def save_figure(fig: Figure, stem: str | os.PathLike[str], dpi: int = 200) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically; returns both paths."""
    FigureCanvasAgg(fig)
    base = figure_stem(stem)
    out = []
    for fmt in FIG_FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.03)
        path = base.with_name(f"{base.name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def _label(keys: Sequence[str], values: tuple) -> str:
    if not keys:
        return "all runs"
    return " ".join(f"{k}={v}" for k, v in zip(keys, values))


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)


def describe_runs(df: pd.DataFrame, skip: Iterable[str] = ()) -> str:
    """A title from the runs' constant config fields, e.g. ``fashionmnist, convnet3, ipc 10
    (protocol dc1000)``. Fields in ``skip`` (plotted on an axis or in the legend) and fields
    with several values are left out; ``""`` when nothing is left."""
    skip = set(skip)
    parts = []
    for col in TITLE_FIELDS:
        if col in skip or col not in df.columns:
            continue
        values = df[col].dropna().unique()
        if len(values) == 1:
            parts.append(f"ipc {_text(values[0])}" if col == "ipc" else _text(values[0]))
    text = ", ".join(parts)
    if "protocol" in df.columns and "protocol" not in skip:
        protocols = df["protocol"].dropna().unique()
        if len(protocols) == 1:
            text = f"{text} (protocol {protocols[0]})" if text else f"protocol {protocols[0]}"
    return text


def _figure_legend(
    fig: Figure, handles: list, labels: list[str], title: str | None = None
) -> Legend:
    """One legend below all axes ("outside" in constrained layout, so it never covers data),
    with as many columns (at most 4) as fit the figure's width."""
    renderer = FigureCanvasAgg(fig).get_renderer()

    def make(ncol: int) -> Legend:
        return fig.legend(
            handles, labels, loc="outside lower center", ncol=ncol, fontsize="small",
            title=title, title_fontsize="small", frameon=False,
        )

    leg = make(1)
    fits = max(0.98 * fig.bbox.width, leg.get_window_extent(renderer).width)
    for ncol in range(min(4, len(handles)), 1, -1):
        wide = make(ncol)
        if wide.get_window_extent(renderer).width <= fits:
            leg.remove()
            return wide
        wide.remove()
    return leg


def xy_summary(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: Sequence[str] = (),
    *,
    protocol: str | None = None,
    where: Iterable[str] = (),
) -> pd.DataFrame:
    """mean, std (ddof=1) and n of ``y`` over seeds for each (hue..., x); same checks as tables.

    ``attrs["protocol"]`` lists the protocols and ``attrs["title"]`` describes the selected runs
    (:func:`describe_runs` without the plotted columns); :func:`plot_xy` uses both.
    """
    keys = [*hue, x]
    ignore = ("eval_models",) if "__" in y else ()
    data = prepare(df, keys, y, protocol=protocol, where=where, ignore=ignore)
    out = summarize(data, keys, y)
    out = out[out["n"] > 0].reset_index(drop=True)
    if out.empty:
        raise ConfigError(f"the selected runs have no value for {y!r}")
    protocols = sorted(map(str, data["protocol"].dropna().unique())) if "protocol" in data else []
    out.attrs["protocol"] = ", ".join(protocols)
    out.attrs["title"] = describe_runs(data, skip=keys)
    return out


def x_scale(values: np.ndarray, xscale: str) -> tuple[str, dict]:
    """(matplotlib scale name, its keyword arguments) for numeric x ``values``.

    ``log`` with a zero (or negative) value is ``symlog``, linear up to the smallest non-zero
    |x|: zero gets its own tick instead of breaking the plot. ``auto`` takes a log axis when the
    non-zero values are all positive and span at least 20x (an ablation over 0, 1e-4, 1e-3, 1e-2
    too), else linear.
    """
    if xscale not in ("auto", "linear", "log"):
        raise ConfigError(f"--xscale must be auto, linear or log, got {xscale!r}")
    nonzero = np.abs(values[values != 0])
    if xscale == "linear" or not len(nonzero):
        return "linear", {}
    if xscale == "auto" and not ((values >= 0).all() and nonzero.max() / nonzero.min() >= 20):
        return "linear", {}
    if (values > 0).all():
        return "log", {}
    return "symlog", {"linthresh": float(nonzero.min()), "linscale": 0.5}


def _scale_transform(name: str, kw: dict) -> Transform:
    """The forward transform of a scale (x -> axis coordinate before the axes' own scaling)."""
    if name == "log":
        return LogTransform(10)
    if name == "symlog":
        return SymmetricalLogTransform(10, kw["linthresh"], kw["linscale"])
    return IdentityTransform()


def _spread_ticks(ax, fig: Figure) -> None:
    """No two x tick labels overlap: in the order of their ticks, each label that overlaps the
    last one kept is hidden (its tick stays), e.g. 1e-4 next to 0 on a forced linear axis."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    kept = None
    for tick in sorted(ax.xaxis.get_major_ticks(), key=lambda t: t.get_loc()):
        label = tick.label1
        if not label.get_visible() or not label.get_text():
            continue
        box = label.get_window_extent(renderer)
        if kept is not None and box.x0 < kept.x1 + 2:
            label.set_visible(False)
        else:
            kept = box


def dodge_offsets(n_groups: int, positions: np.ndarray) -> np.ndarray:
    """Horizontal offset of each hue group, in the units of ``positions`` (log10 x on a log
    axis, the category index for a categorical x): centred on 0, together at most 30% of the
    smallest gap between x positions, so groups at equal x stay apart but near their tick."""
    if n_groups < 2:
        return np.zeros(max(n_groups, 1))
    gaps = np.diff(np.unique(positions))
    gap = float(gaps.min()) if len(gaps) else 1.0
    step = min(0.08, 0.3 / (n_groups - 1)) * gap
    return (np.arange(n_groups) - (n_groups - 1) / 2) * step


def plot_xy(
    summary: pd.DataFrame,
    x: str,
    y: str,
    hue: Sequence[str] = (),
    xscale: str = "auto",
    title: str | None = None,
) -> Figure:
    """Error-bar plot of a :func:`xy_summary` table (accuracies in percent).

    ``title`` None takes ``summary.attrs["title"]`` (dataset, net, protocol); ``""`` drops it.
    Each hue group has its own colour and marker and is dodged sideways by
    :func:`dodge_offsets`; the ticks stay at the true x values.
    """
    scale = 100.0 if is_accuracy(y) else 1.0
    numeric = pd.api.types.is_numeric_dtype(summary[x]) and not pd.api.types.is_bool_dtype(
        summary[x]
    )
    cats = sorted(summary[x].astype(str).unique()) if not numeric else []
    values = np.unique(summary[x].to_numpy(float)) if numeric else np.arange(len(cats), dtype=float)
    scale_name, scale_kw = x_scale(values, xscale) if numeric else ("linear", {})
    forward = _scale_transform(scale_name, scale_kw)
    groups = list(summary.groupby(list(hue), dropna=False, sort=True)) if hue else [((), summary)]
    offsets = dodge_offsets(len(groups), forward.transform(values.reshape(-1, 1)).ravel())
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    handles, labels = [], []
    for k, (key, g) in enumerate(groups):
        g = g.sort_values(x)
        xs = g[x].to_numpy(float) if numeric else np.array([cats.index(str(v)) for v in g[x]], float)
        shifted = forward.transform(xs.reshape(-1, 1)) + offsets[k]  # dodged on the axis' own scale
        xs = forward.inverted().transform(shifted).ravel()
        key = key if isinstance(key, tuple) else (key,)
        bars = ax.errorbar(
            xs, g["mean"].to_numpy(float) * scale,
            yerr=np.nan_to_num(g["std"].to_numpy(float) * scale, nan=0.0),
            color=f"C{k % 10}", marker=MARKERS[k % len(MARKERS)], ms=6, lw=1.5,
            ls="-" if numeric else "none",  # no line between unordered categories
            capsize=4, capthick=1.2, elinewidth=1.2, alpha=0.85,
        )
        handles.append(bars)
        labels.append(_label(hue, key))
    if scale_name != "linear":
        ax.set_xscale(scale_name, **scale_kw)
    ax.set_xticks(values, [_text(v) for v in values] if numeric else cats)
    if not numeric:
        ax.set_xlim(-0.5, len(cats) - 0.5)
    ax.minorticks_off()
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)" if scale != 1.0 else y)
    ax.grid(True, alpha=0.3)
    title = summary.attrs.get("title", "") if title is None else title
    if title:
        ax.set_title(title, fontsize="medium")
    ns = sorted(set(summary["n"]))
    n_text = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    note = f"{n_text} runs per point" + ("; single-run points have no bar" if ns[0] == 1 else "")
    if hue:
        _figure_legend(fig, handles, labels, title=f"mean ± std over seeds (ddof=1), {note}")
    else:
        _figure_legend(fig, handles, [f"mean ± std over seeds (ddof=1); {note}"])
    _spread_ticks(ax, fig)
    return fig


def metrics_path(row_dir: str) -> str:
    """The ``metrics.jsonl`` of a result row's dir: a row comes from ``RUN/eval/<eval_id>/``, the
    metrics are the distillation's, ``RUN/metrics.jsonl`` (a dir of the old flat layout holds both)."""
    parent = os.path.dirname(os.path.normpath(row_dir))
    if os.path.basename(parent) == EVALS and not os.path.exists(os.path.join(row_dir, METRICS)):
        return os.path.join(os.path.dirname(parent), METRICS)
    return os.path.join(row_dir, METRICS)


def load_curves(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(eval rows, loss rows) from each run's metrics.jsonl, tagged with the run's row index.

    Each row's metrics are its run's (:func:`metrics_path`). Eval rows have columns
    ``row, it, eval_acc, eval_model, eval_epochs`` (-1 if not logged); loss rows ``row, it, loss``.
    An eval row at ``it == 0`` (the synthetic set at initialisation) is kept like any other. A torn last line is skipped; runs without a metrics
    file are skipped; a row repeated for the same iteration keeps its last value.
    """
    if "run_dir" not in df.columns:
        raise ConfigError("curves need run dirs: give runs directories, not a results CSV")
    evals: list[tuple] = []
    losses: list[tuple] = []
    for row, run_dir in zip(df.index, df["run_dir"]):
        for rec in read_jsonl(metrics_path(str(run_dir))):
            it = rec.get("it")
            if not isinstance(it, (int, float)) or isinstance(it, bool):
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
    ev = ev.drop_duplicates(["row", "it", "eval_model", "eval_epochs"], keep="last")
    lo = pd.DataFrame(losses, columns=["row", "it", "loss"])
    lo = lo.drop_duplicates(["row", "it"], keep="last")
    if ev.empty and lo.empty:
        raise ConfigError("no metrics.jsonl rows (it + loss or eval_acc) found in these runs")
    return ev.reset_index(drop=True), lo.reset_index(drop=True)


def curves_note(evals: pd.DataFrame, losses: pd.DataFrame) -> str | None:
    """What :func:`plot_curves` left out, for the CLI to print; None when both panels are drawn."""
    if evals.empty:
        return ("no accuracy rows in metrics.jsonl (the runs were made without --eval-every): "
                "plotted the loss only")
    if losses.empty:
        return "no loss rows in metrics.jsonl: plotted the accuracy only"
    return None


def curve_groups(df: pd.DataFrame) -> tuple[list[str], pd.Series]:
    """Config columns (except seed) that vary across runs, and each run's group label."""
    varying = [c for c in config_columns(df) if c != SEED and df[c].nunique(dropna=False) > 1]
    if not varying:
        return [], pd.Series("all runs", index=df.index)
    labels = df[varying].astype(str).apply(
        lambda r: " ".join(f"{k}={v}" for k, v in zip(varying, r)), axis=1
    )
    return varying, labels


def _draw_band(ax, frame: pd.DataFrame, value: str, scale: float, style: dict) -> bool:
    """Mean over runs per iteration, with a ± std band where several runs; True if a band."""
    stats = frame.groupby("it")[value].agg(["mean", "std", "count"]).reset_index()
    its = stats["it"].to_numpy(float)
    mean = stats["mean"].to_numpy(float) * scale
    marker = style["marker"] if len(its) <= 30 else None
    ax.plot(its, mean, color=style["color"], ls=style.get("ls", "-"), marker=marker, ms=4, lw=1.5)
    std = np.nan_to_num(stats["std"].to_numpy(float) * scale, nan=0.0)
    band = bool((stats["count"] > 1).any())
    if band:
        ax.fill_between(its, mean - std, mean + std, alpha=0.2, color=style["color"], lw=0)
    return band


def _style_iteration_axis(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)
    ax.set_xlabel("iteration")
    ax.grid(True, alpha=0.3)


def _eval_tags(ev: pd.DataFrame) -> dict[tuple[str, int], str]:
    """A legend text per (eval_model, eval_epochs); empty texts when there is only one."""
    tags = sorted(set(zip(ev["eval_model"], ev["eval_epochs"])))
    tag_model = len({m for m, _ in tags}) > 1
    tag_epochs = len({e for _, e in tags}) > 1  # quick evals and final evals differ
    out = {}
    for model, epochs in tags:
        parts = ([model] if tag_model else []) + ([f"{epochs} epochs"] if tag_epochs else [])
        out[(model, epochs)] = ", ".join(parts)
    return out


def _eval_subtitle(ev: pd.DataFrame) -> str:
    tags = sorted(set(zip(ev["eval_model"], ev["eval_epochs"])))
    if len(tags) != 1:
        return ""
    model, epochs = tags[0]
    parts = ([model] if model else []) + ([f"{epochs} epochs"] if epochs >= 0 else [])
    return f" ({', '.join(parts)})" if parts else ""


def plot_curves(
    df: pd.DataFrame, evals: pd.DataFrame, losses: pd.DataFrame, title: str | None = None
) -> Figure:
    """Left: eval accuracy (%) vs iteration; right: loss vs iteration; mean ± std over seeds.

    One colour and marker per config group in both panels, one line style per evaluation
    (model, epochs) when there are several; integer iteration ticks; the eval at iteration 0
    (initialisation) is plotted when logged. A panel without rows is left out rather than drawn
    empty (:func:`curves_note` says which). ``title`` None describes the runs
    (:func:`describe_runs`); ``""`` drops it. The legend sits below the panels.
    """
    varying, labels = curve_groups(df)
    ev = evals.assign(group=labels.reindex(evals["row"]).to_numpy())
    lo = losses.assign(group=labels.reindex(losses["row"]).to_numpy())
    runs = pd.concat([ev[["group", "row"]], lo[["group", "row"]]]).drop_duplicates()
    runs = runs.groupby("group").size()  # runs with metrics, per group
    group_names = sorted(set(ev["group"]) | set(lo["group"]))
    styles = {
        g: {"color": f"C{k % 10}", "marker": MARKERS[k % len(MARKERS)]}
        for k, g in enumerate(group_names)
    }
    panels = [p for p in ("acc", "loss") if not (ev if p == "acc" else lo).empty]
    fig = Figure(figsize=(3.4 * len(panels) + 0.4, 3.2), layout="constrained")
    axes = dict(zip(panels, fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]))
    band = False
    tags = _eval_tags(ev)
    tag_styles = {t: LINESTYLES[k % len(LINESTYLES)] for k, t in enumerate(sorted(tags))}
    if "acc" in axes:
        ax = axes["acc"]
        for (group, model, epochs), frame in ev.groupby(
            ["group", "eval_model", "eval_epochs"], sort=True
        ):
            style = {**styles[group], "ls": tag_styles[(model, epochs)]}
            band |= _draw_band(ax, frame, "eval_acc", 100.0, style)
        ax.set_title(f"evaluation accuracy{_eval_subtitle(ev)}", fontsize="medium")
        ax.set_ylabel("test accuracy (%)")
        _style_iteration_axis(ax)
    if "loss" in axes:
        ax = axes["loss"]
        for group, frame in lo.groupby("group", sort=True):
            band |= _draw_band(ax, frame, "loss", 1.0, styles[group])
        positive = lo["loss"].to_numpy(float)
        if positive.min() > 0 and positive.max() / positive.min() >= 100:
            ax.set_yscale("log")
        ax.set_title("distillation loss", fontsize="medium")
        ax.set_ylabel("loss")
        _style_iteration_axis(ax)
    title = describe_runs(df, skip=varying) if title is None else title
    if title:
        fig.suptitle(title, fontsize="medium")
    handles: list = [
        Line2D([], [], color=s["color"], marker=s["marker"], ms=4, lw=1.5) for s in styles.values()
    ]
    texts = [f"{g} (n={runs.get(g, 0)})" for g in styles]
    if len(tags) > 1:
        handles += [Line2D([], [], color="0.3", ls=tag_styles[t], lw=1.5) for t in sorted(tags)]
        texts += [f"eval {tags[t]}" for t in sorted(tags)]
    if band:
        handles.append(Patch(facecolor="0.5", alpha=0.3))
        texts.append("± std over seeds (ddof=1)")
    _figure_legend(fig, handles, texts, title="lines: mean over the n seeds of each group")
    return fig
