"""A finished generator run deploys from any shell: ``hpcdd generate``, ``show`` and ``evaluate`` and
a sweep's separate evaluation task, each in a FRESH interpreter (subprocesses: nothing generative
is imported before they read generator.pt), on a tiny ``dim`` and a tiny ``global_local`` run.
Generator files written before the architecture was a reference still load; a file naming a
module outside hpcdd and $HPCDD_PLUGINS is refused without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpcdd.artefact import load_source
from hpcdd.catalog import configs_from_flat, eval_id
from hpcdd.config import EvalConfig, ExecConfig, to_dict
from hpcdd.errors import CheckpointError
from hpcdd.run import run_one

REPO = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "iterations": 2, "gan_steps": 3, "gan_width": 8, "gan_batch": 32, "match_batch": 20,
        "pool_warmup": 1, "pool": ["convnet3"], "local_layers": ["convnet3:block2"], "ipc": 2}


def hpcdd(*argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``hpcdd ARGV`` (or ``python -c CODE``) in a fresh interpreter, this tree first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = ["-c", code] if code is not None else ["-c", "import sys; from hpcdd.cli import main; "
                                                  "sys.exit(main(sys.argv[1:]))", *argv]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished (not evaluated) dim and global_local run sharing one tiny pretraining."""
    root = tmp_path_factory.mktemp("deploy")
    exe = ExecConfig(progress=False, artefact_root=str(root / "art"))
    out = {}
    for method in ("dim", "global_local"):
        run, _ = configs_from_flat({"method": method, **TINY}, where="test")
        run_one(run, root / method, exe, evaluate=False)
        out[method] = root / method
    return out


@pytest.mark.parametrize("method, ipcs", [("dim", (1, 10, 50)), ("global_local", (10,))])
def test_generate_show_and_evaluate_in_a_fresh_interpreter(runs, tmp_path, method, ipcs):
    run = runs[method]
    for ipc in ipcs:
        proc = hpcdd("generate", str(run), "--ipc", str(ipc), "--out", str(tmp_path / f"{ipc}.pt"))
        assert proc.returncode == 0, proc.stderr
        assert torch.load(tmp_path / f"{ipc}.pt", weights_only=True)["images"].shape == (10 * ipc, 1, 28, 28)
    proc = hpcdd("show", str(run), "--ipc", "2", "-o", str(tmp_path / "g.png"))
    assert proc.returncode == 0 and (tmp_path / "g.png").stat().st_size > 0, proc.stderr
    proc = hpcdd("evaluate", str(run), "--eval-kind", "resample", "--eval-ipc", "2", "--eval-epochs", "1",
                 "--eval-n", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    [eid] = [p.name for p in (run / "eval").iterdir() if (p / "done").exists()
             and json.loads((p / "result.json").read_text())["eval_kind"] == "resample"]
    row = json.loads((run / "eval" / eid / "result.json").read_text())
    assert row["protocol"] == "dim-resample1" and row["method"] == method and row["ipc"] == 2


def test_a_sweeps_separate_evaluation_task_in_a_fresh_interpreter(runs):
    run = runs["global_local"]
    ev = EvalConfig(epochs=1, n=1, ipc=3)
    task = run / "eval" / eval_id(ev)
    exe = {"progress": False}
    code = (f"from hpcdd.sweep.job import SweepJob\n"
            f"SweepJob('eval', {{'eval': {to_dict(ev)!r}}}, {str(task)!r}, {exe!r})()\n")
    proc = hpcdd(code=code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((task / "result.json").read_text())["ipc"] == 3


def test_a_generator_file_from_before_names_its_architecture_dim(runs, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("run.json", "config.yaml", "done"):
        (old / name).write_bytes((runs["dim"] / name).read_bytes())
    state = torch.load(runs["dim"] / "generator.pt", weights_only=True)
    assert state["arch"] == "hpcdd.generative.nets:Generator"
    torch.save({**state, "arch": "dim"}, old / "generator.pt")
    proc = hpcdd("generate", str(old), "--ipc", "1", "--out", str(tmp_path / "s.pt"))
    assert proc.returncode == 0, proc.stderr
    fresh = hpcdd("generate", str(runs["dim"]), "--ipc", "1", "--out", str(tmp_path / "t.pt"))
    assert fresh.returncode == 0, fresh.stderr
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["images"],
                       torch.load(tmp_path / "t.pt", weights_only=True)["images"])


@pytest.mark.parametrize("arch, words", [
    ("os:system", "outside hpcdd and $HPCDD_PLUGINS"),
    ("hpcdd.io:atomic_write_bytes", "not an nn.Module class"),
    ("hpcdd.generative.nets:NoSuchNet", "cannot be loaded"),
    ("toy", "not a 'module:Class' reference"),
])
def test_a_generator_file_cannot_name_anything_else(runs, tmp_path, arch, words):
    state = torch.load(runs["dim"] / "generator.pt", weights_only=True)
    torch.save({**state, "arch": arch}, tmp_path / "generator.pt")
    with pytest.raises(CheckpointError, match=words.replace("$", r"\$")):
        load_source(tmp_path / "generator.pt", "generator")


def test_a_module_outside_hpcdd_is_never_imported(runs, tmp_path, monkeypatch):
    (tmp_path / "planted.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').touch()\n"
                                         "import torch\nclass G(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(runs["dim"] / "generator.pt", weights_only=True)
    torch.save({**state, "arch": "planted:G"}, tmp_path / "generator.pt")
    with pytest.raises(CheckpointError, match="not importing 'planted'"):
        load_source(tmp_path / "generator.pt", "generator")
    assert not (tmp_path / "RAN").exists() and "planted" not in sys.modules
    monkeypatch.setenv("HPCDD_PLUGINS", "planted")  # a plugin the user named: allowed (then fails to build)
    with pytest.raises(CheckpointError):
        load_source(tmp_path / "generator.pt", "generator")
    assert (tmp_path / "RAN").exists()
    sys.modules.pop("planted", None)
