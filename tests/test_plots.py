"""Plots and image grids look like paper figures: legends off the data, percent axes, integer
iteration ticks, the eval at initialisation, titles naming the runs, dodged markers, and an
upscaled image grid with class names (issue 12, item 13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from hpcdd.report.aggregate import aggregate
from hpcdd.imagegrid import (
    grid_size, image_grid_figure, labelled_grid_figure, save_image_grid, tile_grid,
)
from hpcdd.report.plots import (
    curves_note, describe_runs, dodge_offsets, load_curves, plot_curves, plot_xy, xy_summary,
)
from hpcdd.report.select import filter_rows

MAIN = Path(__file__).resolve().parent / "fixtures" / "fake_sweep" / "main"
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def fake_runs(root: Path, groups: dict[str, float], seeds=(0, 1), evals=True, its=8) -> pd.DataFrame:
    """Runs dirs with metrics.jsonl (loss every iteration, an eval at 0 and every 4) and the
    matching results frame; ``groups`` maps a method name to its accuracy at initialisation."""
    rows = []
    for method, acc0 in groups.items():
        for seed in seeds:
            run = root / f"{method}_{seed}"
            run.mkdir(parents=True)
            lines = [{"it": i, "loss": 10.0 / (i + 1) + seed} for i in range(its)]
            if evals:
                lines += [{"it": i, "eval_acc": acc0 + 0.01 * i + 0.01 * seed,
                           "eval_model": "convnet3", "eval_epochs": 100} for i in range(0, its + 1, 4)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
            rows.append(dict(run_dir=str(run), method=method, seed=seed, ipc=10,
                             dataset="fashionmnist", net="convnet3", protocol="dc1000"))
    return pd.DataFrame(rows)


def drawn(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def assert_legend_clear(fig) -> None:
    """Every legend lies inside the figure and overlaps no axes (labels and titles included)."""
    renderer = drawn(fig)
    assert fig.legends
    for leg in fig.legends:
        box = leg.get_window_extent(renderer)
        assert box.x0 >= fig.bbox.x0 - 1 and box.x1 <= fig.bbox.x1 + 1 and box.y0 >= fig.bbox.y0 - 1
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer))
            assert not box.overlaps(ax.get_tightbbox(renderer))


# --------------------------------------------------------------------------------------- curves


def test_curves_legend_below_panels_even_with_many_groups(tmp_path: Path) -> None:
    methods = {f"method_with_a_long_name_{k}": 0.3 + 0.05 * k for k in range(7)}
    df = fake_runs(tmp_path, methods)
    fig = plot_curves(df, *load_curves(df))
    assert len(fig.axes) == 2
    assert_legend_clear(fig)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert all(any(m in t for t in texts) for m in methods)
    # the fixture's curves (two groups, a band) as the CLI draws them
    d = filter_rows(aggregate([MAIN])[0], None, ["ipc=10"])
    assert_legend_clear(plot_curves(d, *load_curves(d)))


def test_curves_integer_iteration_ticks_percent_axis_and_initial_point(tmp_path: Path) -> None:
    df = fake_runs(tmp_path, {"dm": 0.80})
    evals, losses = load_curves(df)
    assert (evals["it"] == 0).sum() == 2  # one eval at initialisation per seed
    fig = plot_curves(df, evals, losses)
    drawn(fig)
    acc, loss = fig.axes
    assert "accuracy" in acc.get_title() and "loss" in loss.get_title()
    for ax in (acc, loss):
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    assert "%" in acc.get_ylabel()
    (line,) = acc.get_lines()
    xs, ys = line.get_xdata(), line.get_ydata()
    assert xs[0] == 0 and ys[0] == pytest.approx(100 * (0.80 + 0.005))  # mean of seeds 0, 1
    assert ys.max() > 1 and max(acc.get_yticks()) > 1  # percent, not a 0-1 axis


def test_curves_without_evals_plot_the_loss_alone(tmp_path: Path) -> None:
    df = fake_runs(tmp_path, {"dm": 0.5, "random": 0.4}, evals=False)
    evals, losses = load_curves(df)
    assert evals.empty and "--eval-every" in curves_note(evals, losses)
    fig = plot_curves(df, evals, losses)
    assert len(fig.axes) == 1 and "loss" in fig.axes[0].get_title()
    assert_legend_clear(fig)
    both = fake_runs(tmp_path / "both", {"dm": 0.5})
    assert curves_note(*load_curves(both)) is None


def test_curves_title_names_dataset_and_net(tmp_path: Path) -> None:
    df = fake_runs(tmp_path, {"dm": 0.5, "random": 0.4})
    title = plot_curves(df, *load_curves(df))._suptitle.get_text()
    assert "fashionmnist" in title and "convnet3" in title and "dc1000" in title
    assert "dm" not in title  # method varies: it is in the legend, not the title


def test_load_curves_keeps_the_last_of_a_repeated_row(tmp_path: Path) -> None:
    df = fake_runs(tmp_path, {"dm": 0.5}, seeds=(0,))
    path = Path(df["run_dir"][0]) / "metrics.jsonl"
    extra = {"it": 4, "eval_acc": 0.9, "eval_model": "convnet3", "eval_epochs": 100}
    path.write_text(path.read_text() + json.dumps(extra) + "\n")
    evals, _ = load_curves(df)
    assert evals.loc[evals["it"] == 4, "eval_acc"].tolist() == [0.9]


# ------------------------------------------------------------------------------------------ x-y


def _results() -> pd.DataFrame:
    rows = [dict(method=m, ipc=ipc, seed=s, dataset="fashionmnist", net="convnet3",
                 protocol="dc1000", acc_mean=0.7 + 0.001 * s)
            for m in ("dm", "herding", "random") for ipc in (1, 10, 50) for s in range(3)]
    return pd.DataFrame(rows)  # every method has the same mean: the points would coincide


def test_xy_title_dodge_markers_caps_and_legend() -> None:
    df = _results()
    summary = xy_summary(df, "ipc", "acc_mean", ["method"])
    fig = plot_xy(summary, "ipc", "acc_mean", ["method"])
    ax = fig.axes[0]
    title = ax.get_title()
    assert "fashionmnist" in title and "convnet3" in title and "dc1000" in title
    assert "ipc" not in title and "dm" not in title  # plotted columns stay off the title
    containers = ax.containers
    assert len(containers) == 3
    xs = [c.lines[0].get_xdata() for c in containers]
    assert all(len(set(col)) == 3 for col in zip(*xs))  # equal points are dodged apart
    for col, ipc in zip(zip(*xs), (1, 10, 50)):
        assert all(abs(np.log10(x / ipc)) < 0.15 for x in col)  # but stay near their tick
    assert len({c.lines[0].get_marker() for c in containers}) == 3
    assert all(c.lines[1] for c in containers)  # caps drawn
    assert list(ax.get_xticks()) == [1, 10, 50]
    assert_legend_clear(fig)


def test_xy_title_leaves_out_plotted_and_varying_columns() -> None:
    df = pd.concat([_results(), _results().assign(dataset="mnist")])
    summary = xy_summary(df, "ipc", "acc_mean", ["dataset"], where=["method=dm"])
    title = plot_xy(summary, "ipc", "acc_mean", ["dataset"]).axes[0].get_title()
    assert "mnist" not in title and "convnet3" in title and "dm" in title
    assert describe_runs(df) == "convnet3 (protocol dc1000)"  # dataset, method and ipc vary
    assert describe_runs(df[df["ipc"] == 10], skip=["method"]) == (
        "convnet3, ipc 10 (protocol dc1000)")
    assert plot_xy(summary, "ipc", "acc_mean", ["dataset"], title="").axes[0].get_title() == ""


def test_dodge_offsets_centred_and_small() -> None:
    assert list(dodge_offsets(1, np.array([1.0, 2.0]))) == [0.0]
    off = dodge_offsets(4, np.array([0.0, 2.0, 3.0]))
    assert off.sum() == pytest.approx(0.0) and off.max() - off.min() <= 0.3 + 1e-9


# --------------------------------------------------------------------------------------- images


def test_image_grid_size_scale_and_names(tmp_path: Path) -> None:
    ipc, scale = 3, 4
    labels = torch.arange(10).repeat(ipc)
    images = torch.randn(10 * ipc, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "grid.png"
    save_image_grid(images, labels, 0.286, 0.353, path, scale=scale, class_names=FASHION)
    grid_w, grid_h = grid_size(labels.tolist(), 28, 28, scale=scale)
    assert (grid_w, grid_h) == (ipc * (28 * scale + 2) + 2, 10 * (28 * scale + 2) + 2)
    with Image.open(path) as im:
        assert im.mode == "L" and im.height == grid_h and grid_w + 20 < im.width < grid_w + 300
        png = np.asarray(im)
    # the right-hand part is make_grid's tile grid, pixel for pixel (denormalised, upscaled)
    pixels = torch.round((images * 0.353 + 0.286).clamp(0, 1) * 255).to(torch.uint8)
    grid, starts = tile_grid(pixels, labels.numpy(), None, 2, scale)
    assert np.array_equal(png[:, -grid_w:], grid[:, :, 0])
    assert starts == [(k, k) for k in range(10)]
    assert (png[:, : png.shape[1] - grid_w] < 128).any()  # the names are drawn in the margin


def test_grid_figure_names_each_class_once_with_fallback() -> None:
    labels = torch.tensor([1, 0, 1, 1, 0, 2])  # class 1 wraps onto two rows with per_row=2
    images = torch.zeros(6, 1, 4, 4)
    fig = image_grid_figure(images, labels, 0.5, 0.5, per_row=2, scale=2, class_names=FASHION[:2])
    assert [t.get_text() for t in fig.texts] == ["T-shirt/top", "Trouser", "class 2"]
    renderer = drawn(fig)
    width, height = fig.canvas.get_width_height()
    assert height == grid_size(labels.tolist(), 4, 4, per_row=2, scale=2)[1] == 4 * 10 + 2
    tops = [t.get_window_extent(renderer) for t in fig.texts]
    assert all(box.x1 < width - grid_size(labels.tolist(), 4, 4, 2, scale=2)[0] for box in tops)
    # each name is centred on its class's first row (rows 0, 1 and 3 from the top)
    centres = [height - (box.y0 + box.y1) / 2 for box in tops]
    assert centres == pytest.approx([2 + 4, 2 + 10 + 4, 2 + 30 + 4], abs=2)
    grid = np.full((50, 40, 3), 255, np.uint8)
    fig = labelled_grid_figure(grid, [(12, "Ankle boot")], 10)
    drawn(fig)
    assert fig.canvas.get_width_height()[1] == 50


def test_image_grid_max_per_class_and_old_files(tmp_path: Path) -> None:
    labels = torch.arange(3).repeat_interleave(50)  # ipc 50
    images = torch.rand(150, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "few.png"
    save_image_grid(images, labels, 0.0, 1.0, path, scale=2, max_per_class=5)  # no class names
    w5, h5 = grid_size(labels.tolist(), 8, 8, scale=2, max_per_class=5)
    assert (w5, h5) == (5 * 18 + 2, 3 * 18 + 2)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.height == h5 and im.width > w5
    with pytest.raises(ValueError):
        save_image_grid(images, labels, 0.0, 1.0, path, max_per_class=0)
    with pytest.raises(ValueError):
        save_image_grid(images, labels, 0.0, 1.0, path, scale=0)


# ----------------------------------------------------------------------------------------------
# issue 22: curves of today's run dirs, ablation x axes with a zero


def _run_dir_layout(root: Path, n: int = 2) -> Path:
    """``n`` run dirs of today's layout: run.json and metrics.jsonl at the top, the result row in
    ``eval/<eval_id>/`` (from the fixture's result files)."""
    from hpcdd.report.aggregate import load_result

    sources = sorted(p for p in MAIN.iterdir() if load_result(str(p))[0] is not None)[:n]
    for k, src in enumerate(sources):
        run = root / src.name
        (run / "eval" / "abcdef012345").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"kind": "hpcdd-run", "run_id": src.name}))
        (run / "done").write_text("{}")
        lines = [{"it": i, "loss": 5.0 - i} for i in range(4)] + [{"it": 4, "eval_acc": 0.5 + k / 10,
                                                                   "eval_model": "convnet3", "eval_epochs": 100}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        result = json.loads((src / "result.json").read_text())
        (run / "eval" / "abcdef012345" / "result.json").write_text(json.dumps(result))
        (run / "eval" / "abcdef012345" / "done").write_text("abcdef012345\n")
    return root


def test_curves_of_todays_run_dirs(tmp_path):
    df, _ = aggregate([_run_dir_layout(tmp_path)])
    evals, losses = load_curves(df)
    assert len(losses) == 8 and len(evals) == 2


def test_plot_curve_command_on_a_runs_dir(tmp_path, capsys):
    from hpcdd.cli import main

    runs = _run_dir_layout(tmp_path / "runs")
    assert main(["plot", str(runs), "--curve", "-o", str(tmp_path / "c")]) == 0, capsys.readouterr().err
    assert (tmp_path / "c.png").stat().st_size > 0


def _ablation(values=(0.0, 1e-4, 1e-3, 1e-2)) -> pd.DataFrame:
    rows = [dict(method="global_local", lambda_local=v, seed=s, acc_mean=0.69 + 0.001 * s + v,
                 protocol="dc100", dataset="fashionmnist", ipc=10, net="convnet3")
            for v in values for s in (0, 1)]
    return pd.DataFrame(rows)


def _visible_tick_boxes(fig):
    renderer = drawn(fig)
    [ax] = fig.axes
    return ax, [(t.get_text(), t.get_window_extent(renderer)) for t in ax.get_xticklabels()
                if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("xscale", ["auto", "linear", "log"])
def test_ablation_tick_labels_never_overlap(xscale):
    s = xy_summary(_ablation(), "lambda_local", "acc_mean", ["method"])
    ax, boxes = _visible_tick_boxes(plot_xy(s, "lambda_local", "acc_mean", ["method"], xscale=xscale))
    for (_, a), (_, b) in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0, [t for t, _ in boxes]
    assert boxes[0][0] == "0" and boxes[-1][0] == "0.01"
    if xscale != "linear":  # spread on a (sym)log axis: every value keeps its label
        assert [t for t, _ in boxes] == ["0", "0.0001", "0.001", "0.01"]


def test_log_x_with_a_zero_draws_every_point_without_warnings():
    import warnings

    s = xy_summary(_ablation(), "lambda_local", "acc_mean", ["method"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the RuntimeWarning of log10(0) fails the test
        fig = plot_xy(s, "lambda_local", "acc_mean", ["method"], xscale="log")
        drawn(fig)
    [ax] = fig.axes
    xs = np.concatenate([line.get_xdata() for line in ax.get_lines() if len(line.get_xdata()) == 4])
    assert np.isfinite(xs).all() and (xs[0] == 0 or abs(xs[0]) < 1e-6)
    assert ax.get_xscale() == "symlog"
