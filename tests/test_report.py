"""Results layer: aggregate, tables (golden files), plots, image grids, CLI wiring.

The fake sweep under tests/fixtures/fake_sweep holds:
  main/       dm and random on fashionmnist ipc 1/10 (random ipc 10 has one seed, the rest two),
              dm on mnist ipc 1 (random mnist is missing), one truncated result.json, one run
              still running (config.yaml only), one result.json without its done marker;
  noaug/      a second protocol (dc300-noaug);
  crossarch/  dm distilled with convnet3 and resnet18, each evaluated on both.
Regenerate the golden files with HPCDD_UPDATE_GOLDEN=1 (then read them before committing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from hpcdd.errors import ConfigError, HpcddError
from hpcdd.report.aggregate import aggregate, load_results_csv
from hpcdd.report.commands import register
from hpcdd.imagegrid import grid_size, save_image_grid
from hpcdd.report.plots import load_curves
from hpcdd.report.published import load_published
from hpcdd.report.render import render
from hpcdd.report.tables import build_cross_arch, build_table

REPO = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures" / "fake_sweep"
GOLDEN = Path(__file__).resolve().parent / "golden"
MAIN, NOAUG, CROSS = FIX / "main", FIX / "noaug", FIX / "crossarch"
CORRUPT_ID, RUNNING_ID, NODONE_ID = "11d510e067d2", "c071cf5f5ed6", "138cf05b430d"


def cli(argv: list[str]) -> int:
    """Run a report subcommand the way the hpcdd main does (HpcddError -> exit 2)."""
    p = argparse.ArgumentParser(prog="hpcdd")
    sub = p.add_subparsers()
    register(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except HpcddError as e:
        print(f"hpcdd: error: {e}", file=sys.stderr)
        return 2


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HPCDD_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"


@pytest.fixture(scope="module")
def main_df() -> pd.DataFrame:
    return aggregate([MAIN])[0]


# ------------------------------------------------------------------------------- aggregate


def test_aggregate_one_row_per_finished_run(main_df: pd.DataFrame) -> None:
    assert len(main_df) == 9
    assert main_df["run_id"].is_unique
    for col in ("protocol", "method", "dataset", "ipc", "seed", "eval_models", "eval_dsa",
                "acc_mean", "acc_mean__convnet3", "run_dir"):
        assert col in main_df.columns
    assert set(main_df["eval_models"]) == {"convnet3"}
    assert main_df["accs"].iloc[0].count("+") == 2  # lists joined with '+'
    cross = aggregate([CROSS])[0]
    assert set(cross["eval_models"]) == {"convnet3+resnet18"}


def test_corrupt_json_is_warned_with_path_not_fatal(capsys, tmp_path: Path) -> None:
    df, report = aggregate([MAIN])
    bad = [p for p, _ in report.bad_files]
    assert bad == [str(MAIN / CORRUPT_ID / "result.json")]
    assert CORRUPT_ID not in set(df["run_id"])
    assert cli(["aggregate", str(MAIN), "-o", str(tmp_path / "r.csv")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and str(MAIN / CORRUPT_ID / "result.json") in err


def test_non_object_and_incomplete_json_are_listed(tmp_path: Path) -> None:
    good = tmp_path / "runs" / "aaaaaaaaaaaa"
    shutil.copytree(MAIN / "fd0cbd03085e", good)
    for name, text in (("bbbbbbbbbbbb", "[1, 2]"), ("cccccccccccc", '{"method": "dm"}')):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "result.json").write_text(text)
        (d / "done").write_text("")
    (tmp_path / "runs" / "dddddddddddd").mkdir()
    (tmp_path / "runs" / "dddddddddddd" / "done").write_text("")  # done but no result.json
    df, report = aggregate([tmp_path / "runs"])
    assert len(df) == 1
    reasons = dict((Path(p).parent.name, r) for p, r in report.bad_files)
    assert "not a JSON object" in reasons["bbbbbbbbbbbb"]
    assert "missing key" in reasons["cccccccccccc"]
    assert "missing" in reasons["dddddddddddd"]


def test_missing_done_counts_as_incomplete(main_df: pd.DataFrame, capsys) -> None:
    _, report = aggregate([MAIN])
    assert sorted(Path(p).name for p in report.incomplete) == sorted([RUNNING_ID, NODONE_ID])
    assert NODONE_ID not in set(main_df["run_id"])  # result.json without done is not a row
    assert "2 incomplete" in report.summary()
    assert cli(["aggregate", str(MAIN)]) == 0
    out, err = capsys.readouterr()
    assert "2 incomplete run(s)" in err
    assert len(pd.read_csv(__import__("io").StringIO(out))) == 9


def test_empty_or_missing_dir_is_an_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="no finished runs"):
        aggregate([tmp_path])
    assert cli(["aggregate", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a directory"):
        aggregate([tmp_path / "nope"])


def test_aggregate_is_read_only_and_dedupes(tmp_path: Path) -> None:
    before = sorted((p, p.stat().st_mtime_ns) for p in FIX.rglob("*"))
    df, report = aggregate([MAIN, MAIN / "nested"])  # overlapping roots
    assert len(df) == 9 and not report.duplicates
    assert sorted((p, p.stat().st_mtime_ns) for p in FIX.rglob("*")) == before
    shutil.copytree(MAIN, tmp_path / "a")
    shutil.copytree(MAIN, tmp_path / "b")
    df, report = aggregate([tmp_path])
    assert len(df) == 9 and len(report.duplicates) == 9
    assert "duplicate" in "\n".join(report.warnings())


def test_aggregate_csv_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "results" / "main.csv"
    assert cli(["aggregate", str(MAIN), "-o", str(out)]) == 0
    df = load_results_csv(out)
    assert len(df) == 9
    from_csv = render(build_table(df, ["method"], ["dataset", "ipc"]), "md")
    from_dir = render(build_table(aggregate([MAIN])[0], ["method"], ["dataset", "ipc"]), "md")
    assert from_csv == from_dir
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file


# ------------------------------------------------------------------------------- tables


def _main_table(fmt: str, main_df: pd.DataFrame) -> str:
    model = build_table(main_df, ["method"], ["dataset", "ipc"], published=load_published())
    return render(model, fmt)


@pytest.mark.parametrize("fmt,name", [("md", "table_main.md"), ("latex", "table_main.tex"),
                                      ("csv", "table_main.csv")])
def test_golden_tables(fmt: str, name: str, main_df: pd.DataFrame) -> None:
    check_golden(name, _main_table(fmt, main_df))


def test_golden_cross_arch() -> None:
    check_golden("table_crossarch.md", render(build_cross_arch(aggregate([CROSS])[0]), "md"))


def test_uneven_seeds_show_n_and_mark(main_df: pd.DataFrame) -> None:
    text = render(build_table(main_df, ["method"], ["dataset", "ipc"]), "md")
    assert "| random | 52.0±1.4 (n=2) | 73.5 (n=1)† | — |" in text
    assert "70.5±0.7 (n=2)" in text
    assert "† = fewer runs than expected (2)" in text
    assert "ddof=1" in text and "not the standard error" in text
    flagged = render(build_table(main_df, ["method"], ["dataset", "ipc"], expect=3), "md")
    assert "70.5±0.7 (n=2)†" in flagged and "(3)" in flagged


def test_uniform_n_is_not_repeated_per_cell() -> None:
    text = render(build_cross_arch(aggregate([CROSS])[0]), "md")
    assert "(n=" not in text and "n = 2 run(s) per cell" in text
    assert "†" not in text.split("\n\n")[0]


def test_missing_cell_is_visible_never_zero(main_df: pd.DataFrame) -> None:
    for fmt, dash in (("md", "—"), ("csv", "—"), ("latex", "---")):
        text = render(build_table(main_df, ["method"], ["dataset", "ipc"]), fmt)
        row = next(line for line in text.splitlines() if line.lstrip("| ").startswith("random"))
        assert dash in row and " 0.0" not in row


def test_mixed_protocols_refused_unless_filtered(capsys) -> None:
    df, _ = aggregate([MAIN, NOAUG])
    with pytest.raises(ConfigError, match=r"dc1000, dc300-noaug.*--protocol"):
        build_table(df, ["method"], ["dataset", "ipc"])
    assert cli(["table", str(FIX / "noaug"), "--protocol", "dc300-noaug"]) == 0
    assert "65.5±0.7" in capsys.readouterr().out
    assert cli(["table", str(FIX)]) == 2
    err = capsys.readouterr().err
    assert "hpcdd: error:" in err and "dc300-noaug" in err and "--protocol" in err
    ok = build_table(df, ["method"], ["dataset", "ipc"], protocol="dc1000")
    assert "protocol dc1000" in render(ok, "md")
    side_by_side = build_table(df, ["method"], ["protocol", "ipc"], where=["dataset=fashionmnist"])
    assert "dc300-noaug" in render(side_by_side, "md")  # explicit key: shown, never averaged


def test_other_varying_config_is_refused() -> None:
    df = aggregate([CROSS])[0]
    with pytest.raises(ConfigError, match="'net'.*--where net="):
        build_table(df, ["method"], ["dataset", "ipc"])
    ok = build_table(df, ["method"], ["dataset", "ipc"], where=["net=resnet18"])
    assert "76.5±0.7" in render(ok, "md")


def test_non_numeric_or_unknown_metric_is_an_error(main_df: pd.DataFrame, capsys) -> None:
    with pytest.raises(ConfigError, match="not numeric"):
        build_table(main_df, ["method"], ["dataset", "ipc"], metric="hostname")
    with pytest.raises(ConfigError, match="unknown metric"):
        build_table(main_df, ["method"], ["dataset", "ipc"], metric="nope")
    assert cli(["table", str(MAIN), "--metric", "eval_models"]) == 2
    assert "not numeric" in capsys.readouterr().err


def test_cross_arch_matrix(capsys) -> None:
    df = aggregate([CROSS])[0]
    model = build_cross_arch(df)
    assert model.row_labels == (("convnet3",), ("resnet18",))
    assert model.col_labels == (("convnet3",), ("resnet18",))
    text = render(model, "csv")
    assert "convnet3,83.5±0.7,79.0±1.4" in text
    assert cli(["table", str(CROSS), "--cross-arch", "--format", "latex"]) == 0
    assert r"79.0$\pm$1.4" in capsys.readouterr().out


def test_published_rows_only_for_table_cells(main_df: pd.DataFrame) -> None:
    text = _main_table("md", main_df)
    assert "| random (published) | 51.4 | 73.8 | — |" in text
    assert "dm (published)" not in text  # DM's paper reports no Fashion-MNIST: no row, no guess
    assert "idc (published)" not in text and "ipc=50" not in text
    assert "Whole training set (published): fashionmnist 93.5." in text
    with pytest.raises(ConfigError, match="with-published"):
        build_table(main_df, ["dataset"], ["ipc", "method"], published=load_published())
    with pytest.raises(ConfigError, match="with-published"):
        build_table(main_df, ["method"], ["dataset", "ipc"], metric="distill_seconds",
                    published=load_published())


def test_published_csv_content() -> None:
    pub = load_published()
    assert list(pub.columns) == ["method", "dataset", "ipc", "acc", "source"]
    assert pub["source"].notna().all() and pub["acc"].between(0, 100).all()
    look = {(m, d, i): a for m, d, i, a in pub[["method", "dataset", "ipc", "acc"]].itertuples(
        index=False)}
    assert look[("kip", "fashionmnist", "50")] == 91.0
    assert look[("whole", "fashionmnist", "full")] == 93.5
    assert look[("dsa", "mnist", "50")] == 99.2
    assert look[("dm", "cifar10", "50")] == 63.0
    assert ("dm", "fashionmnist", "10") not in look  # no traceable source (issue 12 item 19)
    assert not pub["source"].str.contains("verify|as quoted", case=False).any()
    assert len(pub) == 34


def test_latex_is_well_formed(main_df: pd.DataFrame) -> None:
    tex = _main_table("latex", main_df)
    bare = re.sub(r"\\[{}]", "", tex)
    assert bare.count("{") == bare.count("}")
    assert r"$\pm$" in tex and "±" not in tex and "†" not in tex and "—" not in tex
    assert "---" in tex and r"$^\dagger$" in tex
    assert re.search(r"(?<!\\)_", tex) is None  # every underscore escaped
    assert tex.count(r"\begin{") == tex.count(r"\end{")


def test_table_output_file_and_where(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.tex"
    assert cli(["table", str(MAIN), "--format", "latex", "--with-published", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (GOLDEN / "table_main.tex").read_text("utf-8")
    assert cli(["table", str(MAIN), "--where", "method=dm", "--where", "ipc=1"]) == 0
    text = capsys.readouterr().out
    assert "random" not in text and "70.5±0.7" in text and "89.5±0.7" in text
    assert cli(["table", str(MAIN), "--where", "colour=red"]) == 2
    assert cli(["table", str(MAIN), "--where", "method=kip"]) == 2


# ------------------------------------------------------------------------------- plots / images


def _assert_figures(stem: Path) -> None:
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000


def test_plot_writes_png_and_pdf(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "main.csv"
    assert cli(["aggregate", str(MAIN), "-o", str(csv)]) == 0
    stem = tmp_path / "fig" / "acc_by_ipc"
    argv = ["plot", str(csv), "--where", "dataset=fashionmnist", "-o", f"{stem}.png"]
    assert cli(argv) == 0
    _assert_figures(stem)
    assert f"{stem}.pdf" in capsys.readouterr().out
    ablation = tmp_path / "abl"  # x may be any config column; categorical x works too
    assert cli(["plot", str(CROSS), "--x", "net", "--hue", "", "-o", str(ablation)]) == 0
    _assert_figures(ablation)
    assert cli(["plot", str(csv), "-o", str(tmp_path / "mixed")]) == 2  # datasets averaged


def test_curves_from_metrics(tmp_path: Path) -> None:
    df = aggregate([MAIN])[0]
    evals, losses = load_curves(df)
    assert len(evals) == 2 * 9 and len(losses) == 3 * 9  # the torn last line is skipped
    stem = tmp_path / "curves"
    assert cli(["plot", str(MAIN), "--curve", "--where", "ipc=10", "-o", str(stem)]) == 0
    _assert_figures(stem)
    assert cli(["plot", str(tmp_path / "curves.png"), "--curve"]) == 2


def test_save_image_grid_pixel_size(tmp_path: Path) -> None:
    from PIL import Image

    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2])
    images = torch.randn(9, 3, 8, 10)
    path = tmp_path / "grid.png"
    save_image_grid(images, labels, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2], path, scale=1)
    grid_w, grid_h = grid_size(labels.tolist(), 8, 10)
    with Image.open(path) as im:  # the tile grid at the right, class names in a left column
        assert (grid_w, grid_h) == (3 * 12 + 2, 3 * 10 + 2)
        assert im.height == grid_h and im.width > grid_w
        assert im.mode == "RGB"
    grey = tmp_path / "grey.png"
    save_image_grid(torch.zeros(5, 1, 4, 4), torch.tensor([0, 0, 0, 1, 1]), 0.5, 0.5, grey,
                    per_row=2, scale=3)
    with Image.open(grey) as im:  # tiles upscaled 3x, padding stays 2 px
        grid_w, grid_h = grid_size([0, 0, 0, 1, 1], 4, 4, per_row=2, scale=3)
        assert im.mode == "L" and im.height == grid_h == 3 * 14 + 2 and grid_w == 2 * 14 + 2
        x0 = im.width - grid_w
        assert im.getpixel((x0 + 2, 2)) == 128  # 0 * 0.5 + 0.5 -> mid grey
        assert im.getpixel((x0 + 2 + 11, 2 + 11)) == 128 and im.getpixel((x0 + 1, 2)) == 255
    with pytest.raises(ValueError):
        save_image_grid(images, labels[:3], 0.5, 0.5, tmp_path / "bad.png")


def test_bench_script_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.csv"
    cmd = [sys.executable, str(REPO / "bench" / "bench_aggregate.py"), "--n", "30", "-o", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, timeout=120)
    row = pd.read_csv(out).iloc[0]
    assert row["n_runs"] == 30 and row["seconds"] > 0
    assert {"git_commit", "hostname", "cpu_count", "python", "pandas", "date"} <= set(row.index)


def test_help_texts() -> None:
    p = argparse.ArgumentParser(prog="hpcdd")
    sub = p.add_subparsers()
    register(sub)
    for name in ("aggregate", "table", "plot"):
        assert sub.choices[name].description
    assert json.dumps(sorted(sub.choices)) == '["aggregate", "plot", "table"]'
