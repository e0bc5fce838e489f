"""The hpcdd command: help texts, bad input -> one line + exit 2, show/evaluate."""

import subprocess
import sys

import pytest
import torch

from hpcdd.catalog import eval_id
from hpcdd.cli import build_parser, main
from hpcdd.config import EvalConfig
from hpcdd.run import run_one

from helpers import QUIET, tiny

TINY_FLAGS = ["--dataset", "digits", "--ipc", "1", "--iterations", "2", "--batch-real", "8",
              "--eval-epochs", "1", "--eval-n", "1", "--no-progress"]


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("cmd", subcommands())
def test_every_subcommand_has_help(capsys, cmd):
    code, out, _ = run_cli(capsys, cmd, "--help")
    assert code == 0 and "usage: hpcdd" in out and len(out.splitlines()) > 3


def test_top_level_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "hpcdd.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("distill", "evaluate", "show", "aggregate", "table", "plot"):
        assert cmd in out.stdout


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--net", "nope"], "unknown net 'nope'"),
        (["--eval-models", "convnet3,nope"], "unknown net 'nope'"),
        (["--ipc", "0"], "ipc must be >= 1"),
        (["--iterations", "-1"], "iterations must be >= 0"),
        (["--ipc", "ten"], "invalid int value"),
        (["--checkpoint-every", "0"], "checkpoint_every"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, flags, words):
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "distill", *TINY_FLAGS, *flags, "--out", str(out_dir))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not out_dir.exists()  # nothing created for rejected input


def test_config_file_with_wrong_type(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nipc: [1, 2]\n")
    code, _, err = run_cli(capsys, "distill", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "'ipc' must be int" in err and len(err.strip().splitlines()) == 1, err
    cfg.write_text("dataset: digits\nexec: {checkpoint_every: often}\n")
    code, _, err = run_cli(capsys, "run", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "checkpoint_every" in err


def test_unwritable_out_dir(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = run_cli(capsys, "distill", *TINY_FLAGS, "--out", str(tmp_path / "f" / "r"))
    assert code == 2 and "cannot write to run dir" in err


EVAL1 = eval_id(EvalConfig(epochs=1, n=1))


def test_existing_run_is_not_overwritten_unless_asked(capsys, tmp_path):
    out = tmp_path / "r"
    assert run_cli(capsys, "distill", *TINY_FLAGS, "--method", "random", "--out", str(out))[0] == 0
    result = out / "eval" / EVAL1 / "result.json"
    before = result.read_text()
    code, _, err = run_cli(capsys, "distill", *TINY_FLAGS, "--method", "random", "--seed", "3", "--out", str(out))
    assert code == 2 and "different run" in err and len(err.strip().splitlines()) == 1
    assert result.read_text() == before
    code, _, _ = run_cli(capsys, "distill", *TINY_FLAGS, "--method", "random", "--seed", "3", "--out", str(out),
                         "--overwrite")
    assert code == 0 and result.read_text() != before


def test_finished_run_prints_its_result_again(capsys, tmp_path):
    out = tmp_path / "r"
    assert run_cli(capsys, "distill", *TINY_FLAGS, "--method", "random", "--out", str(out))[0] == 0
    code, text, err = run_cli(capsys, "distill", *TINY_FLAGS, "--method", "random", "--out", str(out))
    assert code == 0 and "acc (%)" in text and err == ""


def test_corrupt_checkpoint_is_exit_2(capsys, tmp_path):
    out = tmp_path / "r"
    run_one(tiny(), out, QUIET, evaluate=False)
    (out / "synset.pt").unlink()
    (out / "done").unlink()
    for p in (out / "checkpoint").iterdir():
        p.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "distill", "--dataset", "digits", "--ipc", "2", "--iterations", "6",
                           "--batch-real", "16", "--eval-epochs", "2", "--eval-n", "1", "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no usable checkpoint" in err


def test_show_and_evaluate(capsys, tmp_path):
    out = tmp_path / "r"
    assert run_cli(capsys, "distill", *TINY_FLAGS, "--no-eval", "--out", str(out))[0] == 0
    code, text, _ = run_cli(capsys, "show", str(out))
    assert code == 0 and "not evaluated" in text and (out / "synset.png").stat().st_size > 0
    code, text, _ = run_cli(capsys, "evaluate", str(out), "--eval-epochs", "1", "--eval-n", "1", "--no-progress")
    assert code == 0 and "dc1" in text and (out / "eval" / EVAL1 / "done").exists()
    code, text, _ = run_cli(capsys, "show", str(out), "-o", str(tmp_path / "g.png"))
    assert code == 0 and "acc (%)" in text and (tmp_path / "g.png").exists()
    (out / "synset.pt").write_bytes(b"junk")
    code, _, err = run_cli(capsys, "evaluate", str(out), "--eval-epochs", "2")
    assert code == 2 and "corrupt" in err and len(err.strip().splitlines()) == 1


def test_every_torch_load_is_weights_only():
    import re
    from pathlib import Path

    import hpcdd

    root = Path(hpcdd.__file__).parent
    for path in root.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_sigusr2_checkpoints_and_exits_3_then_resumes(tmp_path):
    """The sbatch contract: USR2 -> checkpoint at the next step -> exit 3 -> rerun resumes."""
    import os
    import signal
    import time

    out = tmp_path / "r"
    argv = [sys.executable, "-m", "hpcdd.cli", "distill", "--dataset", "digits", "--ipc", "1",
            "--iterations", "40", "--batch-real", "8", "--no-eval", "--checkpoint-every", "1000",
            "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "SIGUSR2 received" in err and len(list((out / "checkpoint").iterdir())) == 1
    stopped_at = int(next((out / "checkpoint").iterdir()).name[5:13])
    assert 3 <= stopped_at < 40
    proc = subprocess.run(argv,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed at iteration {stopped_at}" in (out / "log.txt").read_text()


def test_kill_9_loses_at_most_the_time_floor(tmp_path):
    """A node failure runs no handler: with fewer iterations than checkpoint_every, only the
    time floor (checkpoint_minutes) has written checkpoints, and the rerun resumes from one."""
    import os
    import signal
    import time

    out = tmp_path / "r"
    argv = [sys.executable, "-m", "hpcdd.cli", "distill", "--dataset", "digits", "--ipc", "1",
            "--iterations", "60", "--batch-real", "8", "--no-eval", "--checkpoint-every", "100000",
            "--checkpoint-minutes", "0.01", "--no-progress", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    ckpts = out / "checkpoint"
    deadline = time.monotonic() + 180
    while not (ckpts.exists() and any(ckpts.glob("ckpt-*.pt"))) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    saved = sorted(int(p.name[5:13]) for p in ckpts.glob("ckpt-*.pt"))
    assert saved and saved[-1] < 60
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    resumed = [int(l.rsplit(" ", 1)[1]) for l in (out / "log.txt").read_text().splitlines()
               if "resumed at iteration" in l]
    assert resumed and resumed[0] >= saved[0] > 0
    ref = tmp_path / "ref"
    assert subprocess.run([*argv[:-1], str(ref)], capture_output=True, timeout=600).returncode == 0
    a = torch.load(out / "synset.pt", weights_only=True)["images"]
    b = torch.load(ref / "synset.pt", weights_only=True)["images"]
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# issue 22: the stop handler from the first instant, names as choices, progress lines in logs


def _sigterm_caught(pid: int) -> bool:
    status = open(f"/proc/{pid}/status").read()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    import signal

    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("module", ["hpcdd", "hpcdd.cli"])
def test_sigterm_while_starting_is_caught_before_torch_loads(tmp_path, module):
    """The handler is installed before the slow imports: once the process catches SIGTERM, torch is
    not loaded yet; a TERM then is exit 3 with one line, and nothing is written."""
    import os
    import signal
    import time

    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", module, "distill", *TINY_FLAGS, "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _sigterm_caught(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.001)
    torch_loaded = "libtorch" in open(f"/proc/{proc.pid}/maps").read()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert not torch_loaded, "the stop handler came only after torch was imported"
    assert proc.returncode == 3, err
    assert err.strip().splitlines() == [
        "hpcdd: SIGTERM received before the work began; nothing was written; run the same command again"]
    assert not out.exists()


def test_names_are_choices_in_help_and_for_completion(capsys):
    from hpcdd.names import DATASET_NAMES, NET_NAMES
    from hpcdd.specs import METHODS, SAMPLERS

    code, out, _ = run_cli(capsys, "distill", "--help")
    assert code == 0
    assert "--method {" + ",".join(METHODS.names()) + "}" in " ".join(out.split())
    distill = next(a for a in build_parser()._actions if a.dest == "command").choices["distill"]
    choices = {a.dest: a.choices for a in distill._actions if a.choices}
    assert choices == {"method": METHODS.names(), "sampler": SAMPLERS.names(),
                       "dataset": list(DATASET_NAMES), "net": list(NET_NAMES)}


def test_progress_off_a_terminal_is_lines_not_bar_frames(capsys, tmp_path):
    """stderr is not a terminal here (as in a Slurm .err log): no carriage-return frames, a line
    per loop (every 30 s and at its end) for the distillation and each evaluation model."""
    flags = [f for f in TINY_FLAGS if f != "--no-progress"]
    code, _, err = run_cli(capsys, "distill", *flags, "--method", "dm", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "\r" not in err and "it/s" not in err
    lines = err.strip().splitlines()
    assert any(line.startswith("dm ") and ": 2/2 (100%)" in line and "loss=" in line for line in lines), err
    assert any(line.startswith("eval convnet3 1/1: 1/1 (100%)") for line in lines), err


def test_progress_lines_come_every_so_often():
    import io

    from hpcdd.runtime.progress import progress

    stream = io.StringIO()
    bar = progress(2, 5, desc="x", every=0.0, stream=stream)
    for it in bar:
        bar.set_postfix(loss=f"{it:.1f}")
    assert stream.getvalue().splitlines()[0].startswith("x: 3/5 (60%), ")
    assert stream.getvalue().splitlines()[-1].startswith("x: 5/5 (100%), ") and "loss=4.0" in stream.getvalue()
    quiet = io.StringIO()
    assert list(progress(0, 3, every=1e9, stream=quiet)) == [0, 1, 2]
    assert len(quiet.getvalue().splitlines()) == 2  # the first step, and the end
