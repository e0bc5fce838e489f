"""Hostile and mistaken input, through the ``hpcdd`` command as a user types it: every case exits
with code 2, prints ONE line on stderr, and leaves the disk exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from hpcdd.cli import main
from hpcdd.run import run_one

from helpers import QUIET, tiny

TINY = ["--dataset", "digits", "--ipc", "1", "--iterations", "2", "--batch-real", "8",
        "--eval-epochs", "1", "--eval-n", "1", "--no-progress"]
GRID_BASE = "name: g\nbase: {dataset: digits, method: dm, ipc: 1, iterations: 2}\n"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with a digest of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def refused(capsys, root: Path, *argv: str) -> str:
    """Run ``hpcdd ARGV``; assert exit 2, one stderr line, nothing changed under ``root``."""
    before = snapshot(root)
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code
    _, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(root) == before
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A distilled (not evaluated) digits run to evaluate with broken artefacts."""
    d = tmp_path_factory.mktemp("bad") / "run"
    run_one(tiny(method="random", ipc=1), d, QUIET, evaluate=False)
    return d


# ----------------------------------------------------------------------------------------------
# distill / run


@pytest.mark.parametrize("flags, words", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--eval-models", "convnet3,nope"], "unknown net 'nope'"),
    (["--momentum-img", "-1"], "momentum_img must be in [0, 1)"),
    (["--lr-img", "0"], "lr_img must be > 0"),
    (["--method", "random", "--lr-img", "0.1"], "lr_img is not a parameter of method random"),
    (["--eval-kind", "resample"], "eval_kind resample draws fresh images from a generator"),
    (["--ipc", "500", "--method", "kcenter"], "exceeds the smallest class"),
    (["--eval-epochs", "0"], "eval_epochs must be >= 1"),
    (["--threads", "0"], "threads must be between"),
    (["--sampler", "dream", "--batch-real", "5000"], "exceeds the smallest class"),
    (["--sampler", "dream", "--query-k", "3"], "not a multiple of query_k"),
    (["--sampler", "dream", "--interval", "0"], "interval must be >= 1"),
    (["--method", "random", "--sampler", "dream"], "takes no sampler"),
    (["--method", "global_local", "--pool", "convnet3,resnet10_imagenet",
      "--local-layers", "convnet3:block2,resnet10_imagenet:block2"],
     "pool model resnet10_imagenet has no layer 'block2'; choose one of: layer1, layer2, layer3, layer4"),
    (["--method", "dim", "--im-size", "64"], "no default pool for 64 px images"),
    (["--method", "cgan", "--im-size", "64"], "DiM's GAN handles 28 or 32 px images, got 64"),
])
def test_distill_refuses(capsys, tmp_path, flags, words):
    err = refused(capsys, tmp_path, "distill", *TINY, *flags, "--out", str(tmp_path / "r"))
    assert words in err


def test_empty_out_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out must name a directory" in refused(capsys, tmp_path, "distill", *TINY, "--out", "")


def test_distill_into_another_finished_run(capsys, finished):
    err = refused(capsys, finished.parent, "distill", *TINY, "--method", "random", "--seed", "7",
                  "--out", str(finished))
    assert "already holds a different run" in err


@pytest.mark.parametrize("text, words", [
    (b"ipc: [1, 2]\n", "'ipc' must be int"),
    (b"ipc: 1\nipc: 2\n", "duplicate key 'ipc'"),
    (b"lr_img: 1e-3\nmomentum_img: 2\n", "momentum_img must be in [0, 1)"),  # 1e-3 itself is fine
    (b"\xff\xfe ipc: 1\n", "UTF-8"),
    (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nest"),
    (b"exec: {checkpoint_every: often}\n", "checkpoint_every"),
])
def test_config_files(capsys, tmp_path, text, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text)
    err = refused(capsys, tmp_path, "distill", "--config", str(cfg), "--dataset", "digits", "--out", str(tmp_path / "r"))
    assert words in err


# ----------------------------------------------------------------------------------------------
# grid files


@pytest.mark.parametrize("text, words", [
    (GRID_BASE + "grid: {seed: [" + ",".join(map(str, range(10000))) + "], batch_real: ["
     + ",".join(map(str, range(1, 10001))) + "]}\n", "100,000,000 points"),
    (GRID_BASE + "grid: {ipc: [1]}\ngrid: {ipc: [2]}\n", "duplicate key 'grid'"),
    (GRID_BASE + "slurm: {mem_gb: .nan}\n", "finite"),
    (GRID_BASE + "grid: {momentum_img: [-1]}\n", "momentum_img must be in [0, 1)"),
    (GRID_BASE + "grid: {ipc: [1, 2]}\nevals: [{eval_ipc: 3}]\n", "eval_ipc 3 differs"),
    ("name: g\nbase: " + "[" * 3000 + "]" * 3000 + "\n", "nest"),
])
def test_grid_files(capsys, tmp_path, text, words):
    grid = tmp_path / "g.yaml"
    grid.write_text(text)
    err = refused(capsys, tmp_path, "sweep", "launch", str(grid), "--out", str(tmp_path / "runs"),
                  "--cluster", "debug")
    assert words in err


def test_learning_rates_written_1e_minus_3_are_numbers(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID_BASE + "grid: {lr_img: [1e-3, 5e-2]}\n")
    assert main(["sweep", "launch", str(grid), "--out", str(tmp_path / "runs"), "--dry-run", "--cluster", "local"]) == 0
    assert "0.001" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# evaluate on a broken synset.pt: validated against the dataset before any training


def _break(run: Path, change) -> None:
    state = torch.load(run / "synset.pt", weights_only=True)
    change(state)
    torch.save(state, run / "synset.pt")


@pytest.mark.parametrize("case, change, words", [
    ("shape", lambda s: s.update(images=s["images"][:, :, :20, :20]), "images have shape"),
    ("channels", lambda s: s.update(images=s["images"].repeat(1, 3, 1, 1)), "images have shape"),
    ("labels", lambda s: s.update(labels=s["labels"] + 10), "labels outside 0..9"),
    ("fewer labels", lambda s: s.update(labels=s["labels"][:-1]), "images but 9 labels"),
    ("nan", lambda s: s.update(images=torch.full_like(s["images"], float("nan"))), "NaN"),
    ("classes 0-4 of 10", lambda s: s.update(images=s["images"][:5], labels=s["labels"][:5]),
     "class 5 has 0 image(s), but the run has ipc 1"),
    ("a class twice", lambda s: s.update(labels=torch.where(s["labels"] == 9, 0, s["labels"])),
     "class 0 has 2 image(s)"),
    ("another run's set", lambda s: s.update(run_id="0123456789ab"), "was distilled as run 0123456789ab"),
])
def test_evaluate_refuses_a_broken_synset(capsys, finished, tmp_path, case, change, words):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _break(run, change)
    err = refused(capsys, tmp_path, "evaluate", str(run), "--eval-epochs", "1", "--eval-n", "1", "--no-progress")
    assert words in err


def test_show_with_a_bad_scale(capsys, finished, tmp_path):
    refused(capsys, finished, "show", str(finished), "--scale", "0", "-o", str(tmp_path / "g.png"))


# ----------------------------------------------------------------------------------------------
# generator-only commands on a fixed image set


def test_resample_evaluation_of_an_image_run(capsys, finished):
    err = refused(capsys, finished.parent, "evaluate", str(finished), "--eval-kind", "resample", "--eval-epochs", "1",
                  "--eval-n", "1", "--no-progress")
    assert "eval_kind resample draws fresh images from a generator" in err


def test_generate_from_a_run_without_a_generator(capsys, finished, tmp_path):
    err = refused(capsys, tmp_path, "generate", str(finished), "--ipc", "2", "--out", str(tmp_path / "s.pt"))
    assert "holds a fixed image set (random); only generator runs can draw new images" in err


# ----------------------------------------------------------------------------------------------
# issue 22: evaluate checks the run's identity and the set's classes; outputs never replace
# hpcdd's files; alias bombs; names with a suggestion


def test_evaluate_refuses_a_config_edited_after_distilling(capsys, finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "config.yaml").read_text()
    assert "seed: 0\n" in text
    (run / "config.yaml").write_text(text.replace("seed: 0\n", "seed: 7\n"))
    err = refused(capsys, tmp_path, "evaluate", str(run), "--eval-epochs", "1", "--eval-n", "1", "--no-progress")
    assert "the config was edited after distilling" in err


@pytest.fixture(scope="module")
def evaluated(finished, tmp_path_factory) -> Path:
    """A runs dir holding one evaluated run: ``RUNS/run``."""
    import shutil

    from hpcdd.config import EvalConfig
    from hpcdd.run import evaluate_run

    runs = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(finished, runs / "run")
    evaluate_run(runs / "run", EvalConfig(epochs=1, n=1), QUIET)
    return runs


def _result_of(runs: Path) -> Path:
    [result] = (runs / "run" / "eval").glob("*/result.json")
    return result


@pytest.mark.parametrize("argv", [
    lambda r: ["show", str(r / "run"), "-o", str(r / "run" / "synset.pt")],
    lambda r: ["show", str(r / "run"), "-o", str(r / "run" / "done")],
    lambda r: ["aggregate", str(r), "-o", str(_result_of(r))],
    lambda r: ["aggregate", str(r), "-o", str(r / "run" / "config.yaml")],
    lambda r: ["table", str(r), "-o", str(r / "run" / "log.txt")],
    lambda r: ["plot", str(r), "--x", "seed", "-o", str(r / "run" / "synset.png")],
    lambda r: ["generate", str(r / "run"), "--ipc", "1", "--out", str(r / "run" / "checkpoint" / "ckpt-00000001.pt")],
], ids=["show-synset", "show-done", "aggregate-result", "aggregate-config", "table-log", "plot-png", "generate-ckpt"])
def test_an_output_path_never_replaces_a_file_hpcdd_owns(capsys, evaluated, argv):
    err = refused(capsys, evaluated, *argv(evaluated))
    assert "is a file hpcdd owns in the run dir" in err


def test_show_may_write_its_own_png_into_the_run_dir(capsys, evaluated):
    assert main(["show", str(evaluated / "run"), "-o", str(evaluated / "run" / "synset.png")]) == 0
    assert (evaluated / "run" / "synset.png").stat().st_size > 0


def _bomb(levels: int) -> str:
    """A YAML alias bomb in one flow sequence: each level lists its own anchor's definition and nine
    references to the level below, ``10**levels`` leaves in a few hundred bytes."""
    text = "&a0 [" + ", ".join(["x"] * 10) + "]"
    for k in range(1, levels):
        text = f"&a{k} [{text}, " + ", ".join([f"*a{k - 1}"] * 9) + "]"
    return text


@pytest.mark.parametrize("where", ["seeds: {}", "grid: {{ipc: {}}}", "name: {}"])
def test_a_yaml_alias_bomb_is_one_short_line(capsys, tmp_path, where):
    """10**7 leaves (the issue's 10**9 exhausts memory before the fix; this one only makes a
    message of megabytes)."""
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {dataset: digits, method: dm, ipc: 1, iterations: 2}\n" + where.format(_bomb(7)) + "\n")
    err = refused(capsys, tmp_path, "sweep", "launch", str(grid), "--out", str(tmp_path / "runs"),
                  "--cluster", "debug", "--dry-run")
    assert len(err) < 400 and "expands to more than 1,000,000 values" in err, err[:400]


def test_a_nine_level_alias_bomb_is_refused_when_read():
    from hpcdd.errors import ConfigError
    from hpcdd.yamlfile import load_yaml_text

    with pytest.raises(ConfigError, match="expands to more than") as e:
        load_yaml_text(f"seeds: {_bomb(9)}\n", "g.yaml")
    assert len(str(e.value)) < 200


def test_a_big_value_in_an_error_is_cut_short(capsys, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID_BASE.replace("name: g", "name: [" + ", ".join(["aaaaaaaa"] * 50000) + "]"))
    err = refused(capsys, tmp_path, "sweep", "launch", str(grid), "--out", str(tmp_path / "runs"), "--dry-run")
    assert "name must be letters" in err and len(err) < 400


@pytest.mark.parametrize("flags, words", [
    (["--method", "dmm"], "unknown method 'dmm'; did you mean 'dm'?"),
    (["--sampler", "dreem"], "unknown sampler 'dreem'; did you mean 'dream'?"),
    (["--dataset", "fashion-mnist"], "unknown dataset 'fashion-mnist'; did you mean 'fashionmnist'?"),
    (["--net", "convnt3"], "unknown net 'convnt3'; did you mean 'convnet3'?"),
    (["--eval-models", "convnet3,resnt18"], "unknown net 'resnt18'; did you mean 'resnet18'?"),
])
def test_a_misspelt_name_gets_the_closest_one(capsys, tmp_path, flags, words):
    err = refused(capsys, tmp_path, "distill", *TINY, *flags, "--out", str(tmp_path / "r"))
    assert words in err


def test_a_misspelt_name_in_a_config_file_gets_the_closest_one(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: dcc\n")
    err = refused(capsys, tmp_path, "distill", "--config", str(cfg), "--dataset", "digits", "--out", str(tmp_path / "r"))
    assert "unknown method 'dcc'; did you mean 'dc'?" in err
