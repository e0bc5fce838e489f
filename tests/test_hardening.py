"""Regression tests for the hardening issue (#12): file modes, stale temp files, OS errors as one
line, directory fsync, a torch-free ``hpcdd.io``, the safe YAML loader, aggregate's bad rows and
CSV injection, and the CPUs the local Slurm cluster advertises.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import hpcdd.io as hio
import hpcdd.yamlfile as yf
from hpcdd.errors import ConfigError, HpcddError
from hpcdd.io import WriteError, atomic_write_bytes, clean_stale_tmp
from hpcdd.report.aggregate import FORMULA_START, aggregate, csv_safe, write_csv
from hpcdd.report.commands import register
from hpcdd.yamlfile import MAX_DEPTH, load_yaml_file, load_yaml_text

REPO = Path(__file__).resolve().parents[1]
RUN_TEMPLATE = REPO / "tests" / "fixtures" / "fake_sweep" / "main" / "fd0cbd03085e"


def cli(argv: list[str]) -> int:
    """A report subcommand as the hpcdd main runs it (HpcddError -> one line, exit 2)."""
    p = argparse.ArgumentParser(prog="hpcdd")
    register(p.add_subparsers())
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except HpcddError as e:
        print(f"hpcdd: error: {e}", file=sys.stderr)
        return 2


def error_line(err: str) -> str:
    """The one error line of a command's stderr (asserting there is exactly one, no traceback)."""
    errors = [line for line in err.splitlines() if line.startswith("hpcdd: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def tmp_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """Set the process umask for one test; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


# ---------------------------------------------------------------------------------- file modes


WRITERS = {
    "bytes": lambda p: hio.atomic_write_bytes(p, b"x"),
    "text": lambda p: hio.atomic_write_text(p, "x"),
    "json": lambda p: hio.atomic_write_json(p, {"a": 1}),
    "yaml": lambda p: hio.atomic_write_yaml(p, {"a": 1}),
    "torch": lambda p: hio.atomic_torch_save(p, {"a": 1}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_a_plain_open_gives(tmp_path, umask, writer, mask, mode):
    umask(mask)
    path = tmp_path / "f"
    WRITERS[writer](path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == mode


def test_umask_is_read_without_proc_too(monkeypatch, umask):
    umask(0o027)
    assert hio.current_umask() == 0o027

    def no_proc(*a, **k):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(hio, "open", no_proc, raising=False)
    assert hio.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # the fallback put it back


def test_aggregate_csv_is_readable_by_the_group(tmp_path, umask):
    umask(0o022)
    runs = tmp_path / "runs"
    shutil.copytree(RUN_TEMPLATE, runs / RUN_TEMPLATE.name)
    assert cli(["aggregate", str(runs), "-o", str(tmp_path / "out" / "r.csv")]) == 0
    assert stat.S_IMODE((tmp_path / "out" / "r.csv").stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- stale temp files


def _interrupted_write(monkeypatch, path: Path) -> Path:
    """An atomic write killed between the temp file and the rename (no cleanup ran)."""
    seen: list[str] = []

    def killed(src, dst):
        seen.append(src)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(hio.os, "replace", killed)
        m.setattr(hio.os, "unlink", lambda p: None)  # as after kill -9: nothing cleans up
        with pytest.raises(KeyboardInterrupt):
            atomic_write_bytes(path, b"partial")
    return Path(seen[0])


def test_clean_stale_tmp_removes_only_leftovers_of_atomic_writes(tmp_path, monkeypatch):
    run = tmp_path / "run"
    leftovers = [_interrupted_write(monkeypatch, run / name)
                 for name in ("result.json", "synset.pt", "config.yaml")]
    sub_left = _interrupted_write(monkeypatch, run / "checkpoint" / "ckpt-00000050.pt")
    assert all(p.exists() and hio.is_stale_tmp_name(p.name) for p in [*leftovers, sub_left])
    keep = {
        "notes.tmp": "user", ".hidden": "user", ".notes.tmp": "no random part",
        ".a.ABCDEFGH.tmp": "upper case", ".a.abcdefg.tmp": "7 chars", "a.abcdefgh.tmp": "no dot",
        ".a.abcdefgh.tmp.bak": "other suffix", "result.json": "the real file",
    }
    for name, text in keep.items():
        (run / name).write_text(text)
    (run / ".d.abcdefgh.tmp").mkdir()  # a directory with the pattern's name
    (run / ".l.abcdefgh.tmp").symlink_to(run / "notes.tmp")  # a symlink too
    outside = tmp_path / ".x.abcdefgh.tmp"
    outside.write_text("outside the run dir")

    assert clean_stale_tmp(run) == sorted(leftovers)
    assert sub_left.exists()  # not recursive by default
    assert clean_stale_tmp(run, recursive=True) == [sub_left]
    assert clean_stale_tmp(run, recursive=True) == []
    assert {n: (run / n).read_text() for n in keep} == keep
    assert (run / ".d.abcdefgh.tmp").is_dir() and (run / ".l.abcdefgh.tmp").is_symlink()
    assert outside.exists() and (run / "notes.tmp").read_text() == "user"
    assert clean_stale_tmp(tmp_path / "missing") == []


# ----------------------------------------------------------------------------------- OS errors


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO])
def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, code):
    path = tmp_path / "checkpoint" / "ckpt-00000050.pt"
    atomic_write_bytes(path, b"old checkpoint")

    def full(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(hio.os, "write", full)
    with pytest.raises(WriteError) as info:
        atomic_write_bytes(path, b"new checkpoint" * 1000)
    assert str(info.value) == f"cannot write {path}: {os.strerror(code)}"
    assert isinstance(info.value, OSError) and info.value.errno == code  # `except OSError` still works
    assert path.read_bytes() == b"old checkpoint"
    assert tmp_leftovers(path.parent) == []


def test_enospc_at_fsync_or_rename_also_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    for name in ("fsync", "replace"):
        def fail(*a, _name=name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with monkeypatch.context() as m:
            m.setattr(hio.os, name, fail)
            with pytest.raises(WriteError, match="No space left on device"):
                hio.atomic_write_json(path, {"a": 1})
        assert not path.exists() and tmp_leftovers(tmp_path) == []


def test_interrupt_mid_write_removes_the_temp_file_and_is_not_a_write_error(tmp_path, monkeypatch):
    def interrupted(fd, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(hio.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_writing_onto_a_directory_or_below_a_file_is_one_line(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(WriteError, match=r"^cannot write .*adir: Is a directory$"):
        atomic_write_bytes(tmp_path / "adir", b"x")
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(WriteError, match="not a directory"):
        atomic_write_bytes(tmp_path / "afile" / "x.csv", b"x")
    assert (tmp_path / "afile").read_text() == "mine"
    assert tmp_leftovers(tmp_path) == [] and list((tmp_path / "adir").iterdir()) == []


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(RUN_TEMPLATE, root / RUN_TEMPLATE.name)
    return root


@pytest.mark.parametrize("command", ["aggregate", "table"])
def test_report_output_to_a_directory_is_exit_2_one_line(runs, tmp_path, capsys, command):
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    for target in (str(out_dir), str(tmp_path / "new") + "/"):
        assert cli([command, str(runs), "-o", target]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1
        assert f"cannot write {target}: Is a directory" in err
    assert list(out_dir.iterdir()) == [] and not (tmp_path / "new").exists()
    assert cli([command, str(runs), "-o", ""]) == 2
    assert capsys.readouterr().err.strip() == "hpcdd: error: -o needs a file name, got ''"


@pytest.mark.parametrize("command", ["aggregate", "table"])
def test_report_output_that_cannot_be_written_is_exit_2_one_line(runs, tmp_path, capsys, monkeypatch,
                                                                 command):
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "r.csv"
    assert cli([command, str(runs), "-o", str(target)]) == 2
    assert error_line(capsys.readouterr().err).startswith(f"hpcdd: error: cannot write {target}: ")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hio.os, "write", full)
    assert cli([command, str(runs), "-o", str(tmp_path / "r.csv")]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"hpcdd: error: cannot write {tmp_path / 'r.csv'}: No space left on device")
    assert tmp_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- fsync


def test_fsync_dir_false_syncs_the_file_but_not_the_directory(tmp_path, monkeypatch):
    synced: list[bool] = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(hio.os, "fsync", spy)
    atomic_write_bytes(tmp_path / "a", b"x")
    assert synced == [False, True]
    synced.clear()
    for i in range(3):
        hio.atomic_write_text(tmp_path / f"b{i}", "x", fsync_dir=False)
    hio.atomic_write_json(tmp_path / "c", {}, fsync_dir=False)
    hio.atomic_write_yaml(tmp_path / "d", {}, fsync_dir=False)
    hio.atomic_torch_save(tmp_path / "e", {}, fsync_dir=False)
    assert synced == [False] * 6
    hio.fsync_dir(tmp_path)
    assert synced == [False] * 6 + [True]
    with pytest.raises(WriteError, match="cannot sync directory"):
        hio.fsync_dir(tmp_path / "missing")


def test_importing_hpcdd_io_does_not_import_torch():
    code = "import hpcdd.io, hpcdd.yamlfile, sys; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


# -------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("5e-6", 5e-6), ("1E+2", 100.0), (".5e-1", 0.05), ("1.5e3", 1500.0),
    ("-2e-2", -0.02), ("+3E4", 30000.0), ("1.5", 1.5), ("1.0e-3", 1e-3),
    ("10", 10), ("0x1F", 31), ("1_000", 1000), ("true", True),
    ("1e", "1e"), ("e5", "e5"), ("'1e-3'", "1e-3"), ("1e-3x", "1e-3x"),
])
def test_yaml_numbers(text, value):
    got = load_yaml_text(f"lr_img: {text}\n", "grid.yaml")["lr_img"]
    assert got == value and type(got) is type(value)


def test_yaml_nan_inf_still_floats_and_global_loader_untouched():
    data = load_yaml_text("a: .nan\nb: -.inf\nc: .inf\n", "c.yaml")
    assert data["a"] != data["a"] and data["b"] == float("-inf") and data["c"] == float("inf")
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # PyYAML's own loader is as it was


@pytest.mark.parametrize("text, message", [
    ("base:\n  ipc: 1\n  seed: 0\n  ipc: 10\n", "grid.yaml line 4: duplicate key 'ipc'"),
    ("a: 1\nb: 2\na: 3\n", "grid.yaml line 3: duplicate key 'a'"),
    ("grid: {ipc: [1], ipc: [2]}\n", "grid.yaml line 1: duplicate key 'ipc'"),
    ("a: [1, 2\n", "grid.yaml line 2: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("a: 1\n---\nb: 2\n",
     "grid.yaml line 2: not valid YAML: expected a single document in the stream, but found "
     "another document"),
    ("a: 1\nb: \x00\n", "grid.yaml line 2: not valid YAML: unacceptable character #x0000: "
                        "special characters are not allowed"),
    ("a: 2024-13-01\n", "grid.yaml line 1: cannot read value '2024-13-01': month must be in 1..12"),
    ("a: !!float abc\n", "grid.yaml line 1: cannot read value 'abc': could not convert string "
                         "to float: 'abc'"),
    ("a: !!python/object/apply:os.system ['true']\n",
     "grid.yaml line 1: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_yaml_errors_are_one_line_with_the_line_number(text, message):
    with pytest.raises(ConfigError) as info:
        load_yaml_text(text, "grid.yaml")
    assert str(info.value) == message


def test_yaml_merge_key_may_be_overridden():
    data = load_yaml_text("base: &b {ipc: 1, seed: 0}\nrun:\n  <<: *b\n  ipc: 10\n", "g.yaml")
    assert data["run"] == {"ipc": 10, "seed": 0}


@pytest.mark.parametrize("text", [
    "[" * 5000 + "]" * 5000, "[" * 5000, "{a: " * 5000 + "1" + "}" * 5000,
    "".join("  " * i + "-\n" for i in range(2000)),
])
def test_yaml_nested_thousands_deep_is_one_line(text):
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels deep$"):
        load_yaml_text(text, "deep.yaml")


def test_yaml_depth_limit_is_exact_and_recursion_is_caught(monkeypatch):
    assert load_yaml_text("[" * MAX_DEPTH + "]" * MAX_DEPTH, "d.yaml") is not None
    with pytest.raises(ConfigError, match="d.yaml line 1: nested more than"):
        load_yaml_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "d.yaml")
    monkeypatch.setattr(yf, "MAX_DEPTH", 10**9)  # without the cap, PyYAML recurses too deep
    with pytest.raises(ConfigError, match="^d.yaml: nested too deeply to read$"):
        load_yaml_text("[" * 20000 + "]" * 20000, "d.yaml")


def test_yaml_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_bytes(b"name: x\nmethod: \xff\xfe dm\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(bad, "grid file")
    assert str(info.value) == f"grid file {bad} is not UTF-8 text (byte 0xff on line 2)"
    with pytest.raises(ConfigError) as info:
        load_yaml_file(tmp_path / "nope.yaml")
    assert str(info.value) == f"cannot read config file {tmp_path / 'nope.yaml'}: No such file or directory"
    with pytest.raises(ConfigError, match="Is a directory$"):
        load_yaml_file(tmp_path)
    good = tmp_path / "ok.yaml"
    good.write_text("\ufeffipc: 10\nlr_img: 1e-3\n", encoding="utf-8")
    assert load_yaml_file(good) == {"ipc": 10, "lr_img": 1e-3}
    dup = tmp_path / "dup.yaml"
    dup.write_text("ipc: 1\nipc: 2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(dup)
    assert str(info.value) == f"{dup} line 2: duplicate key 'ipc'"


# --------------------------------------------------------------------------------- aggregate


def _add_run(root: Path, run_id: str, **changes) -> Path:
    run = root / run_id
    shutil.copytree(RUN_TEMPLATE, run)
    data = json.loads((run / "result.json").read_text())
    data.update(run_id=run_id, **changes)
    (run / "result.json").write_text(json.dumps(data))
    return run


BAD_ACC = {
    "a00000000001": ({"acc_mean": float("nan")}, "acc_mean is nan"),
    "a00000000002": ({"acc_mean": "0.9"}, "acc_mean is not a number (got str '0.9')"),
    "a00000000003": ({"acc_mean": None}, "acc_mean is not a number (got NoneType None)"),
    "a00000000004": ({"acc_mean": True}, "acc_mean is not a number (got bool True)"),
    "a00000000005": ({"acc_mean__resnet18": float("inf")}, "acc_mean__resnet18 is inf"),
    "a00000000006": ({"acc_mean__convnet3": "=1+1"}, "acc_mean__convnet3 is not a number"),
    "a00000000007": ({"acc_mean": [0.9]}, "acc_mean is not a number (got list [0.9])"),
}


def test_rows_with_a_bad_accuracy_are_problems_not_rows(tmp_path, capsys):
    root = tmp_path / "runs"
    _add_run(root, "b00000000000")
    for rid, (changes, _) in BAD_ACC.items():
        _add_run(root, rid, **changes)
    df, report = aggregate([root])
    assert list(df["run_id"]) == ["b00000000000"]
    reasons = {Path(p).parent.name: r for p, r in report.bad_files}
    assert set(reasons) == set(BAD_ACC)
    for rid, (_, reason) in BAD_ACC.items():
        assert reasons[rid].startswith(reason), (rid, reasons[rid])
    assert cli(["aggregate", str(root), "-o", str(tmp_path / "r.csv")]) == 0
    err = capsys.readouterr().err
    assert f"skipped {len(BAD_ACC)} unreadable or invalid result file(s)" in err
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run_id"] for r in rows] == ["b00000000000"]


@pytest.mark.parametrize("value, safe", [
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"), ("+1+cmd", "'+1+cmd"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("dm", "dm"),
    ("0.7+0.71", "0.7+0.71"), ("-0.5", "-0.5"), ("+1e-3", "+1e-3"), ("", ""),
    (-0.5, -0.5), (3, 3), (None, None),
])
def test_csv_safe(value, safe):
    assert csv_safe(value) == safe


def test_written_csv_never_holds_a_formula_cell(tmp_path):
    root = tmp_path / "runs"
    evil = "=HYPERLINK(\"http://x\",\"y\")"
    _add_run(root, "c00000000001", method=evil, hostname="@evil", git_commit="-1+1",
             note="\t=1", **{"=key": "x"}, lr_img=-0.5)
    _add_run(root, "c00000000002", hostname="+cmd", lr_img=0.25, note="fine")
    df, _ = aggregate([root])
    path = write_csv(df, tmp_path / "r.csv")
    with open(path, newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert [c for c in cells if c.startswith(FORMULA_START) and csv_safe(c) != c] == []
    assert "-0.5" in cells  # a negative number is left as it is
    with open(path, newline="") as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f)}
    evil_row = rows["c00000000001"]
    assert evil_row["method"] == "'" + evil and evil_row["hostname"] == "'@evil"
    assert evil_row["git_commit"] == "'-1+1" and evil_row["note"] == "'\t=1" and evil_row["'=key"] == "x"
    assert evil_row["lr_img"] == "-0.5" and rows["c00000000002"]["hostname"] == "'+cmd"
    assert evil_row["accs"] == "0.83+0.84+0.85"  # lists stay joined with '+' 
    assert df.loc[df["run_id"] == "c00000000001", "method"].item() == evil  # only the file escapes


# ------------------------------------------------------------------------------ local Slurm


def _print_conf(tmp_path: Path, cpus: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCDD_SLURM_")}
    if cpus is not None:
        env["HPCDD_SLURM_CPUS"] = cpus
    state = Path(tempfile.mkdtemp(prefix="s", dir=tmp_path))
    return subprocess.run(["bash", str(REPO / "slurm" / "start.sh"), "--print-conf", str(state)],
                          env=env, capture_output=True, text=True, timeout=60)


def _machine_cpus() -> int:
    try:
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        return int(out.split("CPUs=", 1)[1].split()[0])
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)


def _node_cpus(conf: str) -> int:
    node = next(line for line in conf.splitlines() if line.startswith("NodeName="))
    return int(node.split("CPUs=", 1)[1].split()[0])


def test_local_cluster_advertises_the_machines_cpus_unless_told(tmp_path):
    proc = _print_conf(tmp_path, None)
    assert proc.returncode == 0, proc.stderr
    assert _node_cpus(proc.stdout) == _machine_cpus()
    proc = _print_conf(tmp_path, "3")
    assert proc.returncode == 0 and _node_cpus(proc.stdout) == 3
    for bad in ("abc", "0", "-2", "1.5"):
        proc = _print_conf(tmp_path, bad)
        assert proc.returncode == 1 and proc.stdout == ""
        assert f"HPCDD_SLURM_CPUS must be a positive whole number, got '{bad}'" in proc.stderr
