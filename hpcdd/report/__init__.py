"""Results layer: aggregate finished runs, then tables, plots and image grids.

One loader feeds pure functions::

    df, report = aggregate(["runs/"])             # hpcdd.report.aggregate
    model = build_table(df, ["method"], ["dataset", "ipc"])   # hpcdd.report.tables
    text = render(model, "md")                     # hpcdd.report.render (md | latex | csv)
    fig = plot_xy(xy_summary(df, "ipc", "acc_mean", ["method"]), "ipc", "acc_mean", ["method"])
    save_figure(fig, "results/acc_by_ipc")        # hpcdd.report.plots -> .png + .pdf
    save_image_grid(images, labels, mean, std, "grid.png")   # hpcdd.imagegrid (below report/)

``hpcdd.report.commands.register(subparsers)`` adds the ``aggregate``/``table``/``plot`` CLI.
Nothing is re-exported here, so ``hpcdd --help`` and the sweep commands never import pandas,
matplotlib or torch through this package.
"""
