"""Results layer: aggregate finished runs, then tables, plots and image grids.

One loader feeds pure functions::

    df, report = aggregate(["runs/"])             # hpcdd.report.aggregate
    model = build_table(df, ["method"], ["dataset", "ipc"])   # hpcdd.report.tables
    text = render(model, "md")                     # hpcdd.report.render (md | latex | csv)
    fig = plot_xy(xy_summary(df, "ipc", "acc_mean", ["method"]), "ipc", "acc_mean", ["method"])
    save_figure(fig, "results/acc_by_ipc")        # hpcdd.report.plots -> .png + .pdf
    save_image_grid(images, labels, mean, std, "grid.png")   # hpcdd.report.images

``hpcdd.report.commands.register(subparsers)`` adds the ``aggregate``/``table``/``plot`` CLI.
Plots and images import matplotlib / PIL / torch lazily, so they are not re-exported here.
"""

from hpcdd.report.aggregate import AggregateReport, aggregate, load_results_csv, write_csv
from hpcdd.report.render import render
from hpcdd.report.tables import TableModel, build_cross_arch, build_table

__all__ = [
    "AggregateReport",
    "aggregate",
    "load_results_csv",
    "write_csv",
    "render",
    "TableModel",
    "build_table",
    "build_cross_arch",
]
