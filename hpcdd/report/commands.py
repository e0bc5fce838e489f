"""The ``aggregate``, ``table`` and ``plot`` subcommands of the ``hpcdd`` CLI.

``register(subparsers)`` adds them to the main parser; each handler returns an exit code. Errors
are raised as :class:`~hpcdd.errors.HpcddError` (the main CLI prints one line and exits 2).
Tables go to stdout unless ``-o``; every file is written atomically. Warnings (unreadable
result files, incomplete runs) go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from hpcdd.errors import ConfigError
from hpcdd.io import WriteError, atomic_write_text

if TYPE_CHECKING:  # pandas is imported by the handlers, not by parsing or --help
    import pandas as pd

    from hpcdd.report.aggregate import AggregateReport

_FILTER_HELP = "keep only runs whose KEY equals one of the VALUEs (repeatable), e.g. ipc=10"


def _warn(report: AggregateReport | None) -> None:
    if report is None:
        return
    for text in report.warnings():
        print(f"hpcdd: warning: {text}", file=sys.stderr)
    print(f"hpcdd: {report.summary()}", file=sys.stderr)


def _check_output(output: str | None, suffixes: tuple[str, ...] = ("",)) -> None:
    """Refuse an ``-o`` that names a directory, or a file hpcdd owns in a run dir
    (:func:`hpcdd.rundir.check_output`), before any work is done (one line, exit 2); other write
    failures surface from the atomic write as :class:`WriteError`. ``suffixes``: the files written
    are ``output + suffix`` (a plot's stem)."""
    from hpcdd.rundir import check_output

    if output is None:
        return
    if not output.strip():
        raise ConfigError(f"-o needs a file name, got {output!r}")
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise WriteError(f"cannot write {output}: Is a directory (-o takes a file name)")
    for suffix in suffixes:
        check_output(output + suffix)


def _emit(text: str, output: str | None) -> None:
    if output:
        atomic_write_text(output, text)
        print(f"hpcdd: wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _load(inputs: list[str]) -> "pd.DataFrame":
    """One results CSV, or one or more runs directories aggregated on the fly."""
    from hpcdd.report.aggregate import aggregate, load_results_csv

    if all(os.path.isdir(p) for p in inputs):
        df, report = aggregate(inputs)
        _warn(report)
        return df
    if len(inputs) == 1:
        return load_results_csv(inputs[0])
    raise ConfigError("give either one results CSV or one or more runs directories")


def cmd_aggregate(args: argparse.Namespace) -> int:
    from hpcdd.report.aggregate import aggregate, to_csv_text, write_csv

    _check_output(args.output)
    df, report = aggregate(args.runs_dirs)
    _warn(report)
    if args.output:
        write_csv(df, args.output)
        print(f"hpcdd: wrote {args.output} ({len(df)} rows, {len(df.columns)} columns)",
              file=sys.stderr)
    else:
        sys.stdout.write(to_csv_text(df))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from hpcdd.report.published import load_published
    from hpcdd.report.render import render
    from hpcdd.report.select import parse_keys
    from hpcdd.report.tables import build_cross_arch, build_table

    _check_output(args.output)
    df = _load([args.input])
    common: dict[str, Any] = dict(
        protocol=args.protocol, where=args.where, expect=args.expect, decimals=args.decimals
    )
    if args.cross_arch:
        if args.with_published:
            raise ConfigError("--with-published cannot be combined with --cross-arch")
        rows = parse_keys(args.rows) or ["net"]
        model = build_cross_arch(df, rows, parse_keys(args.cols), args.metric, **common)
    else:
        rows = parse_keys(args.rows if args.rows is not None else "method")
        cols = parse_keys(args.cols if args.cols is not None else "dataset,ipc")
        published = load_published() if args.with_published else None
        model = build_table(df, rows, cols, args.metric, published=published, **common)
    _emit(render(model, args.format), args.output)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from hpcdd.report import plots
    from hpcdd.report.select import filter_rows, parse_keys

    if args.output:
        stem = str(plots.figure_stem(args.output))
        _check_output(stem, tuple(f".{fmt}" for fmt in plots.FIG_FORMATS))
    if args.curve:
        if not all(os.path.isdir(p) for p in args.inputs):
            raise ConfigError("--curve reads metrics.jsonl from runs directories, not a CSV")
        df = filter_rows(_load(args.inputs), args.protocol, args.where)
        evals, losses = plots.load_curves(df)
        note = plots.curves_note(evals, losses)
        if note:
            print(f"hpcdd: {note}", file=sys.stderr)
        fig = plots.plot_curves(df, evals, losses)
        stem = args.output or os.path.join("results", "curves")
    else:
        df = _load(args.inputs)
        hue = parse_keys(args.hue)
        if args.x in hue:
            raise ConfigError(f"--x {args.x} cannot also be a --hue column")
        summary = plots.xy_summary(
            df, args.x, args.y, hue, protocol=args.protocol, where=args.where
        )
        fig = plots.plot_xy(summary, args.x, args.y, hue, xscale=args.xscale)
        stem = args.output or os.path.join("results", f"{args.y}_by_{args.x}")
    for path in plots.save_figure(fig, stem):
        print(path)
    return 0


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", help="keep only runs of this evaluation protocol, e.g. dc1000")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help=_FILTER_HELP)


def _add_table(sub: Any) -> None:
    p = sub.add_parser(
        "table",
        help="pivot table of mean±std over seeds (Markdown, LaTeX or CSV)",
        description=(
            "Pivot a results CSV (or a runs directory) into a table of mean ± std over seeds "
            "(sample std, ddof=1). Runs of different evaluation protocols are never averaged; "
            "other config fields must agree within a cell (use --where to pick). Accuracies "
            "are shown in percent; missing cells as '—'; n is shown when cells differ and "
            "cells with fewer runs than expected are marked with †."
        ),
    )
    p.add_argument("input", help="results CSV from 'hpcdd aggregate', or a runs directory")
    p.add_argument("--rows", default=None,
                   help="comma-separated row keys (default: method; net with --cross-arch)")
    p.add_argument("--cols", default=None,
                   help="comma-separated column keys (default: dataset,ipc; none with --cross-arch)")
    p.add_argument("--metric", default="acc_mean",
                   help="numeric column to tabulate (default: acc_mean, the first eval model)")
    p.add_argument("--format", choices=("md", "latex", "csv"), default="md",
                   help="output format (default: md)")
    p.add_argument("--with-published", action="store_true",
                   help="add '<method> (published)' rows with ConvNet-3 numbers from the papers")
    p.add_argument("--cross-arch", action="store_true",
                   help="matrix of distillation net (rows) x evaluation model (acc_mean__<arch>)")
    p.add_argument("--expect", type=int, default=None, metavar="N",
                   help="runs expected per cell; fewer are marked † (default: the largest n)")
    p.add_argument("--decimals", type=int, default=None,
                   help="decimals shown (default: 1 for accuracies in %%, else 2)")
    _add_filters(p)
    p.add_argument("-o", "--output", help="write the table to this file (default: stdout)")
    p.set_defaults(func=cmd_table)


def _add_plot(sub: Any) -> None:
    p = sub.add_parser(
        "plot",
        help="plot a metric vs a config column, or training curves (--curve); PNG + PDF",
        description=(
            "Without --curve: mean with std error bars over seeds (ddof=1) of --y against --x "
            "(any config column, e.g. ipc or a method hyper-parameter for ablations), one line "
            "per --hue group. With --curve: evaluation accuracy and loss against iteration from "
            "the runs' metrics.jsonl, one line per config group (seeds averaged). Writes "
            "<stem>.png and <stem>.pdf and prints their paths."
        ),
    )
    p.add_argument("inputs", nargs="+", help="a results CSV, or runs directories")
    p.add_argument("--x", default="ipc", help="x-axis column (default: ipc)")
    p.add_argument("--y", default="acc_mean", help="numeric y column (default: acc_mean)")
    p.add_argument("--hue", default="method",
                   help="comma-separated columns, one line per value (default: method; '' for none)")
    p.add_argument("--xscale", choices=("auto", "linear", "log"), default="auto",
                   help="x axis scale (auto: log when the non-zero values are positive and span "
                   ">= 20x; with a zero the log axis is symlog, so 0 keeps its own tick)")
    p.add_argument("--curve", "--metrics", dest="curve", action="store_true",
                   help="plot accuracy/loss vs iteration from the runs' metrics.jsonl")
    _add_filters(p)
    p.add_argument("-o", "--output", default=None,
                   help="output stem or .png/.pdf path (default: results/<y>_by_<x> or "
                        "results/curves)")
    p.set_defaults(func=cmd_plot)


def register(subparsers: Any) -> None:
    """Add ``aggregate``, ``table`` and ``plot`` to the ``hpcdd`` argparse subparsers."""
    p = subparsers.add_parser(
        "aggregate",
        help="collect finished runs into one tidy CSV (one row per run and evaluation)",
        description=(
            "Search RUNS_DIRs recursively for finished runs (result.json + done marker) and "
            "write one CSV row per (run, evaluation) with every config field as a column (lists joined with "
            "'+'). Read-only. Unreadable result files are listed on stderr and skipped; runs "
            "without a done marker are counted as incomplete and left out."
        ),
    )
    p.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR", help="directories holding runs")
    p.add_argument("-o", "--output", help="CSV to write, e.g. results/NAME.csv (default: stdout)")
    p.set_defaults(func=cmd_aggregate)
    _add_table(subparsers)
    _add_plot(subparsers)
