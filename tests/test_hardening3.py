"""Hardening round 3 (issue 22): nothing a user put in a run dir is lost, a full disk and damaged
files are one line, resume warnings are one line, a plugin is checked when it loads."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcdd.catalog import eval_id
from hpcdd.cli import main
from hpcdd.io import WriteError, append_line
from hpcdd.rundir import clear
from hpcdd.run import run_one
from hpcdd.runtime.checkpoint import checkpoint_files
from hpcdd.runtime.preempt import Interrupted

from helpers import QUIET, TINY_EVAL, stop_after, tiny

FLAGS = ["--dataset", "digits", "--ipc", "1", "--iterations", "4", "--batch-real", "8",
         "--eval-epochs", "1", "--eval-n", "1", "--no-progress"]
EVAL1 = eval_id(TINY_EVAL.__class__(epochs=1, n=1))
REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------- 1. --overwrite


def test_overwrite_keeps_what_the_user_put_in_eval_and_checkpoint(tmp_path):
    run_one(tiny(method="random"), tmp_path, QUIET, evals=[TINY_EVAL])
    eid = eval_id(TINY_EVAL)
    (tmp_path / "eval" / "NOTES.md").write_text("my notes")
    (tmp_path / "eval" / eid / "plot.png").write_bytes(b"mine")
    (tmp_path / "checkpoint").mkdir(exist_ok=True)
    (tmp_path / "checkpoint" / "keep.pt").write_bytes(b"mine")
    run_one(tiny(method="random", seed=2), tmp_path, QUIET, evaluate=False, overwrite=True)
    assert (tmp_path / "eval" / "NOTES.md").read_text() == "my notes"
    assert (tmp_path / "eval" / eid / "plot.png").read_bytes() == b"mine"
    assert (tmp_path / "checkpoint" / "keep.pt").read_bytes() == b"mine"
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "eval").rglob("*"))
    assert left == sorted(["eval/NOTES.md", f"eval/{eid}", f"eval/{eid}/plot.png"])  # the old run's: gone


def test_clear_deletes_exactly_the_owned_files(tmp_path):
    for rel in ("run.json", "done", "log.txt", "eval/a/done", "eval/a/result.json", "eval/a/models/mlp-0.json",
                "eval/a/models/mine.txt", "checkpoint/ckpt-00000002.pt", "checkpoint/ckpt-2.pt", "notes.md",
                "eval/a/.result.json.abcd1234.tmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    clear(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["checkpoint/ckpt-2.pt", "eval/a/models/mine.txt", "notes.md"]
    from hpcdd.rundir import is_owned

    assert is_owned(("eval", "x", "result.json")) and not is_owned(("eval", "NOTES.md"))


# ------------------------------------------------------------------------------- 6. a full disk


def test_an_append_on_a_full_disk_is_one_line():
    with pytest.raises(WriteError) as e:
        append_line("/dev/full", "x" * 100)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == "cannot append to /dev/full: No space left on device"


def test_a_full_disk_while_resuming_is_one_line_and_exit_2(capsys, tmp_path):
    with pytest.raises(Interrupted):
        run_one(tiny(ipc=1, iterations=4, batch_real=8), tmp_path, QUIET, evaluate=False,
                should_stop=stop_after(3))
    (tmp_path / "log.txt").unlink()
    (tmp_path / "log.txt").symlink_to("/dev/full")  # every append: ENOSPC
    code, _, err = cli(capsys, "distill", *FLAGS, "--no-eval", "--out", str(tmp_path))
    assert code == 2
    assert one_error_line(err).endswith("log.txt: No space left on device")


def test_an_os_error_of_a_full_disk_from_anywhere_is_one_line(capsys, tmp_path, monkeypatch):
    import hpcdd.report.aggregate as agg

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x.csv")

    monkeypatch.setattr(agg, "aggregate", full)
    code, _, err = cli(capsys, "aggregate", str(tmp_path), "-o", str(tmp_path / "x.csv"))
    assert code == 2
    assert one_error_line(err) == "hpcdd: error: cannot write /data/x.csv: No space left on device"


# ------------------------------------------------------------------------------- 7. a bad result.json


def test_a_result_json_that_is_not_an_object_is_recomputed_on_a_rerun(capsys, tmp_path):
    out = tmp_path / "r"
    assert cli(capsys, "distill", *FLAGS, "--method", "random", "--out", str(out))[0] == 0
    result = out / "eval" / EVAL1 / "result.json"
    good = json.loads(result.read_text())
    result.write_text("[1, 2]")
    code, text, err = cli(capsys, "distill", *FLAGS, "--method", "random", "--out", str(out))
    assert code == 0 and "Traceback" not in err, err
    again = json.loads(result.read_text())
    assert isinstance(again, dict) and again["accs"] == good["accs"]  # from the saved model file
    assert "acc (%)" in text


# ------------------------------------------------------------------------------- 8. resume warnings


def test_resume_past_a_torn_checkpoint_warns_in_one_line(capsys, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        run_one(tiny(ipc=1, iterations=4, batch_real=8), out, QUIET, evaluate=False, should_stop=stop_after(3))
    newest = checkpoint_files(out / "checkpoint")[0][1]
    newest.write_bytes(newest.read_bytes()[:100])
    capsys.readouterr()
    code, _, err = cli(capsys, "distill", *FLAGS, "--no-eval", "--checkpoint-every", "2", "--out", str(out))
    assert code == 0
    assert err.strip().splitlines() == [f"hpcdd: warning: skipping unreadable or foreign checkpoint {newest}"]
    assert "warning: skipping unreadable" in (out / "log.txt").read_text()


def test_a_checkpoint_of_another_run_is_one_line_in_all(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, method in ((a, "dm"), (b, "dc")):
        with pytest.raises(Interrupted):
            run_one(tiny(method=method, ipc=1, iterations=4, batch_real=8), d, QUIET, evaluate=False,
                    should_stop=stop_after(2))
    for p in (b / "checkpoint").iterdir():  # dm's checkpoints in the dc run's dir
        p.unlink()
    for _, p in checkpoint_files(a / "checkpoint"):
        (b / "checkpoint" / p.name).write_bytes(p.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "hpcdd.cli", "distill", *FLAGS, "--method", "dc", "--no-eval",
                           "--out", str(b)], capture_output=True, text=True, timeout=300)  # warnings unfiltered
    code, err = proc.returncode, proc.stderr
    assert code == 2 and "Traceback" not in err and "UserWarning" not in err, err
    [line] = err.strip().splitlines()
    assert line.startswith("hpcdd: error: no usable checkpoint in") and "unreadable or from another run" in line


# ------------------------------------------------------------------------------- 21. plugins


BAD_PLUGIN = '''
from dataclasses import dataclass
from hpcdd.specs.base import MethodSpec, register_method

@dataclass(frozen=True)
class Params:
    ipc: int = 3
    """A parameter that shadows the run key ipc."""

register_method(MethodSpec(name="clash", impl="nowhere:Nothing", summary="x", params=Params))
'''


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"], ["sweep", "status", "g.yaml", "--out", "r"]])
def test_a_plugin_whose_parameter_shadows_a_run_key_is_refused_when_it_loads(tmp_path, argv):
    (tmp_path / "clashplugin.py").write_text(BAD_PLUGIN)
    (tmp_path / "g.yaml").write_text("base: {dataset: digits}\n")
    env = {**os.environ, "HPCDD_PLUGINS": "clashplugin",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "hpcdd.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr
    line = one_error_line(proc.stderr)
    assert "plugin module(s) clashplugin" in line and "['ipc'] shadow" in line


def test_the_names_module_cites_a_test_that_exists():
    import re

    import hpcdd.names

    cited = re.findall(r"tests/\w+\.py", hpcdd.names.__doc__)
    assert cited and all((REPO / c).is_file() for c in cited)
    test = re.search(r"``(test_\w+)``", hpcdd.names.__doc__).group(1)
    assert f"def {test}(" in (REPO / cited[0]).read_text()
