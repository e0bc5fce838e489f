"""The official DatasetCondensation scripts timed side by side with ``hpcdd distill`` (issue 22, item 13).

What runs
  official  VICO-UoE/DatasetCondensation's own ``main_DM.py`` (DM) and ``main.py --method DC|DSA``,
            unmodified except the torch-2 patch: ``.view(`` -> ``.reshape(`` in ``networks.py``
            (torch 2 refuses ``.view`` on the non-contiguous conv outputs). The bench copies the four
            scripts (main.py, main_DM.py, utils.py, networks.py) into a work directory and patches
            the copy; the checkout given on the command line is never written to.
  hpcdd     ``hpcdd distill`` of this tree (``hpcdd.cli.main``, in process), ``--no-eval``.

Both get the same method, dataset, ipc and settings (ConvNet3 = the official ``ConvNet``, batch_real
256, init real, the official learning rates, hpcdd's resolved DSA strategy passed as the official
``--dsa_strategy``), the same torch threads (``--threads``, also OMP/MKL_NUM_THREADS), one run per
subprocess, the two codes interleaved (official first in even repeats, hpcdd first in odd ones).

How iterations are timed, and evaluations left out
  A harness in the worker process wraps one function at import, without editing either code: the
  official ``utils.get_network`` (called exactly once per training iteration, at its start, once
  the evaluation block of that iteration is over) and hpcdd's method ``step``. Each call records a
  mark (wall clock and the process's CPU time, all threads). Iteration i's time is mark i+1 minus
  mark i; the first ``warmup`` iterations are dropped. After the mark that starts iteration
  warmup+iters the harness stops the script (a BaseException), so nothing after the last timed
  iteration runs. The official evaluations are skipped with the scripts' own flag ``--num_eval 0``
  (their evaluation loop runs zero models; its RuntimeWarning about an empty mean is harmless);
  ``utils.evaluate_synset`` is replaced by a function that fails the run if it is ever called.
  The official visualisation PNG at iteration 0 is written before the first mark. Data loading
  and set-up come before the first mark too (reported as ``setup_s``).

Obtaining the official code (not part of this repository; nothing of it is committed)
  git clone https://github.com/VICO-UoE/DatasetCondensation /work/official/DatasetCondensation
  (the committed rows: commit 53f63a6, cloned from the fetched mirror). Its Python needs torch,
  torchvision, scipy and numpy, which hpcdd's venv has. Fashion-MNIST for it: torchvision's layout
  (``FashionMNIST/raw/<idx files>``) is made in the work directory from the ``.gz`` files in
  ``--fmnist-src`` (default /usr/share/datasets/fashion-mnist); torchvision then finds the files
  and downloads nothing.

Cases: ``METHOD:IPC:ITERS:WARMUP:REPEATS``. A DC/DSA iteration at ipc 10 is 10 matching steps and
9 inner phases of 50 epochs: minutes on a CPU, so its case times ONE whole outer iteration, no
warm-up, one run per code. DC at ipc 1 is one matching step per iteration (no inner phase): it
isolates the matching step. The default (DM ipc 10, DSA ipc 10, DC ipc 1) cost 21 CPU-minutes
at 1 thread (74 minutes of wall time at load 7-11 on the 2-core VM); DC at ipc 10
(``--cases dc:10:1:0:1 --append``) should cost about 14 more. The official DSA at ipc 1 fails on
torch 2 with only the torch-2 patch: its ``rand_cutout`` does ``offset_x[:] = offset_x[0]`` in
place, which torch 2 refuses on a batch of one synthetic image (DM at ipc 1 augments its single
synthetic image the same way), so there is no DSA/DM ipc-1 case.
Output: one CSV row per run (per-iteration seconds in ``wall_s_each`` / ``cpu_s_each``), written
anew atomically (``--append`` keeps the rows already there), and the ratio table of all its rows
(``--out`` with ``.md``): per method and ipc, official / hpcdd of the median and min wall seconds
and the median CPU seconds per iteration over all timed iterations; > 1 means hpcdd is faster.
On a shared machine prefer the CPU ratio, and read the load columns.

Usage:
  python bench/bench_official.py /work/official/DatasetCondensation [--threads 1] [--cases ...]
  python bench/bench_official.py --codes hpcdd --dataset digits --cases dm:1:2:0:1   (no official code)
  python bench/bench_official.py --summary results/bench_official.csv   (rewrite its .md table only)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from csvrows import git_head, write_rows, write_text

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_FILES = ("main.py", "main_DM.py", "utils.py", "networks.py")
OFFICIAL_DATASETS = {"fashionmnist": "FashionMNIST", "mnist": "MNIST"}
"""hpcdd dataset name -> the official ``--dataset`` (the official code downloads; we lay the files out)."""
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
DEFAULT_CASES = "dm:10:10:1:2,dsa:10:1:0:1,dc:1:4:1:1"
CODES = ("official", "hpcdd")


@dataclass(frozen=True)
class Case:
    """One measured setting."""

    method: str
    """dm, dc or dsa (hpcdd's names; the official script and --method follow from it)."""
    ipc: int
    """Synthetic images per class."""
    iters: int
    """Iterations timed per run."""
    warmup: int
    """Iterations run first and not timed."""
    repeats: int
    """Runs per code, interleaved."""

    @classmethod
    def parse(cls, text: str) -> "Case":
        parts = text.strip().split(":")
        if len(parts) != 5 or parts[0] not in ("dm", "dc", "dsa") or not all(p.isdigit() for p in parts[1:]):
            raise SystemExit(f"bench_official: bad case {text!r}; expected METHOD:IPC:ITERS:WARMUP:REPEATS "
                             "with METHOD one of dm, dc, dsa")
        case = cls(parts[0], *map(int, parts[1:]))
        if case.ipc < 1 or case.iters < 1 or case.repeats < 1:
            raise SystemExit(f"bench_official: bad case {text!r}; ipc, iters and repeats must be >= 1")
        return case

    def __str__(self) -> str:
        return ":".join(str(v) for v in asdict(self).values())


# -- preparing the official code and its data ---------------------------------------------------------

def torch2_patch(source: bytes) -> tuple[bytes, int]:
    """networks.py with every ``.view(`` replaced by ``.reshape(`` (bytes: its CRLF line ends stay),
    and the number replaced."""
    return source.replace(b".view(", b".reshape("), source.count(b".view(")


def prepare_official(src: Path, dest: Path) -> int:
    """Copy the official scripts to ``dest`` and apply the torch-2 patch to the copy's networks.py.
    Returns the number of ``.view`` calls replaced."""
    missing = [f for f in OFFICIAL_FILES if not (src / f).is_file()]
    if missing:
        raise SystemExit(f"bench_official: {src} is not a DatasetCondensation checkout (missing {', '.join(missing)})")
    dest.mkdir(parents=True, exist_ok=True)
    for name in OFFICIAL_FILES:
        shutil.copyfile(src / name, dest / name)
    patched, n = torch2_patch((src / "networks.py").read_bytes())
    if n == 0:
        raise SystemExit(f"bench_official: {src}/networks.py has no '.view(' to patch; not the expected code")
    (dest / "networks.py").write_bytes(patched)
    return n


def prepare_idx_layout(src: Path, root: Path, folder: str) -> Path:
    """torchvision's ``root/<folder>/raw/<idx file>`` layout from ``src``'s ``.gz`` (or plain) idx files."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        target = raw / name
        if target.exists():
            continue
        plain, packed = src / name, src / f"{name}.gz"
        if not plain.is_file() and not packed.is_file():
            raise SystemExit(f"bench_official: {src} has no {name}(.gz)")
        with (open(plain, "rb") if plain.is_file() else gzip.open(packed, "rb")) as f_in, \
                open(f"{target}.tmp", "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
        os.replace(f"{target}.tmp", target)  # complete or absent
    return root


def official_argv(case: Case, dataset: str, strategy: str, data: Path, save: Path) -> list[str]:
    """The official script and its arguments for ``case`` (iterations 0..warmup+iters are started)."""
    common = ["--dataset", OFFICIAL_DATASETS[dataset], "--model", "ConvNet", "--ipc", str(case.ipc),
              "--init", "real", "--batch_real", "256", "--num_exp", "1", "--num_eval", "0",
              "--Iteration", str(case.warmup + case.iters), "--data_path", str(data), "--save_path", str(save)]
    if case.method == "dm":
        return ["main_DM.py", *common, "--lr_img", "1", "--dsa_strategy", strategy]
    argv = ["main.py", "--method", case.method.upper(), *common, "--lr_img", "0.1", "--lr_net", "0.01",
            "--batch_train", "256"]
    return argv + (["--dsa_strategy", strategy] if case.method == "dsa" else [])


def hpcdd_argv(case: Case, dataset: str, threads: int, out: Path, data_root: str | None) -> list[str]:
    """``hpcdd distill`` arguments for ``case`` (one more iteration than timed: its start is the last mark)."""
    argv = ["distill", "--method", case.method, "--dataset", dataset, "--ipc", str(case.ipc),
            "--iterations", str(case.warmup + case.iters + 1), "--no-eval", "--no-progress",
            "--threads", str(threads), "--out", str(out)]
    return argv + (["--data-root", data_root] if data_root else [])


def dsa_strategy(method: str, dataset: str, ipc: int) -> str:
    """hpcdd's resolved DSA strategy for this setting (given to the official code too)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this tree's hpcdd
    from hpcdd.catalog import configs_from_flat, resolve

    run, _ = configs_from_flat({"method": method, "dataset": dataset, "ipc": ipc})
    return resolve(run).dsa_strategy


# -- the worker: one run of one code, marks at iteration starts -------------------------------------

class Done(BaseException):
    """Raised by the mark that starts the first untimed iteration: stops either code there
    (a BaseException, so neither code's ``except Exception`` swallows it)."""


class Marks:
    """(wall, CPU) seconds at each iteration start; raises Done once ``last + 1`` marks are taken."""

    def __init__(self, last: int) -> None:
        self.last, self.marks = last, []

    def __call__(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))
        if len(self.marks) > self.last:
            raise Done


def wrap(owner: Any, name: str, before: Callable[[], None]) -> None:
    """Replace ``owner.name`` by a function that calls ``before()`` and then the original."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before()
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def run_official_script(code: Path, argv: list[str], marks: Marks) -> None:
    sys.path.insert(0, str(code))
    import utils  # the official utils.py; main*.py's `from utils import ...` then binds the wrapped names

    def no_evaluation(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("bench_official: the official evaluation ran; --num_eval 0 should have skipped it")

    wrap(utils, "get_network", marks)
    utils.evaluate_synset = no_evaluation
    sys.argv = [str(code / argv[0]), *argv[1:]]
    runpy.run_path(str(code / argv[0]), run_name="__main__")


def run_hpcdd(method: str, argv: list[str], marks: Marks) -> None:
    sys.path.insert(0, str(ROOT))  # this tree's hpcdd, measured
    from hpcdd.cli import main as hpcdd_main
    from hpcdd.specs import METHODS, load_impl

    wrap(load_impl(METHODS.get(method).impl), "step", marks)
    rc = hpcdd_main(argv)
    raise RuntimeError(f"bench_official: hpcdd distill returned {rc} before the last mark")


def worker(args: argparse.Namespace) -> None:
    """One run in this process; writes {marks, threads, torch, setup_s} as JSON to --result."""
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    case = Case.parse(args.case)
    marks = Marks(case.warmup + case.iters)
    try:
        if args.worker == "official":
            argv = official_argv(case, args.dataset, args.strategy, Path(args.official_data), Path(args.save))
            run_official_script(Path(args.official_code), argv, marks)
        else:
            run_hpcdd(case.method, hpcdd_argv(case, args.dataset, args.threads, Path(args.save), args.data_root), marks)
        raise RuntimeError(f"bench_official: {args.worker} ended after {len(marks.marks)} of {marks.last + 1} marks")
    except Done:
        pass
    result = {"marks": marks.marks, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "setup_s": marks.marks[0][0] - t_start}
    Path(args.result).write_text(json.dumps(result))


# -- orchestration -------------------------------------------------------------------------------------

def per_iteration(marks: list[list[float]], warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each timed iteration from the iteration-start marks."""
    walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])][warmup:]
    cpus = [b[1] - a[1] for a, b in zip(marks, marks[1:])][warmup:]
    return walls, cpus


def run_once(code: str, case: Case, repeat: int, args: argparse.Namespace, work: Path, meta: dict) -> dict:
    """One worker subprocess; its CSV row."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{code}-{case.method}{case.ipc}-", dir=work))
    result = run_dir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", code, "--case", str(case),
           "--threads", str(args.threads), "--dataset", args.dataset, "--result", str(result),
           "--save", str(run_dir / "out"), "--strategy", dsa_strategy(case.method, args.dataset, case.ipc)]
    if code == "official":
        cmd += ["--official-code", str(work / "official"), "--official-data", str(work / "data")]
    cmd += ["--data-root", args.data_root] if args.data_root else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load0 = os.getloadavg()
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
    load1 = os.getloadavg()
    if proc.returncode != 0 or not result.exists():
        raise SystemExit(f"bench_official: {code} {case} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(result.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    walls, cpus = per_iteration(r["marks"], case.warmup)
    row = {
        "code": code, "method": case.method, "dataset": args.dataset, "ipc": case.ipc, "repeat": repeat,
        "warmup": case.warmup, "iterations_timed": len(walls),
        "wall_s_per_iter_median": round(statistics.median(walls), 3), "wall_s_per_iter_min": round(min(walls), 3),
        "cpu_s_per_iter_median": round(statistics.median(cpus), 3), "cpu_s_per_iter_min": round(min(cpus), 3),
        "wall_s_each": ";".join(f"{w:.3f}" for w in walls), "cpu_s_each": ";".join(f"{c:.3f}" for c in cpus),
        "setup_s": round(r["setup_s"], 1), "threads": r["threads"],
        "load1_before": round(load0[0], 2), "load5_before": round(load0[1], 2),
        "load1_after": round(load1[0], 2), "load5_after": round(load1[1], 2), "torch": r["torch"], **meta,
    }
    print(f"{case.method:3s} ipc {case.ipc:2d} #{repeat} {code:8s} wall {row['wall_s_per_iter_median']:8.3f} s/it "
          f"(min {row['wall_s_per_iter_min']:.3f}), cpu {row['cpu_s_per_iter_median']:8.3f} s/it, "
          f"{len(walls)} it, setup {row['setup_s']:.0f} s, load {load0[0]:.2f} -> {load1[0]:.2f}", flush=True)
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, ipc): each code's median and min over all its timed iterations (all repeats),
    and official / hpcdd for wall median, wall min and CPU median (> 1: hpcdd is faster)."""
    pooled: dict[tuple[str, int], dict[str, dict[str, list[float]]]] = {}
    for row in rows:
        per_code = pooled.setdefault((str(row["method"]), int(row["ipc"])), {})
        entry = per_code.setdefault(str(row["code"]), {"wall": [], "cpu": [], "load": []})
        entry["wall"] += [float(x) for x in str(row["wall_s_each"]).split(";")]
        entry["cpu"] += [float(x) for x in str(row["cpu_s_each"]).split(";")]
        entry["load"] += [float(row["load1_before"]), float(row["load1_after"])]
    out = []
    for (method, ipc), per_code in pooled.items():
        s: dict[str, Any] = {"method": method, "ipc": ipc}
        for code, e in per_code.items():
            s[f"{code}_iters"] = len(e["wall"])
            s[f"{code}_wall_median"] = statistics.median(e["wall"])
            s[f"{code}_wall_min"] = min(e["wall"])
            s[f"{code}_cpu_median"] = statistics.median(e["cpu"])
            s[f"{code}_load1"] = f"{min(e['load']):.1f}-{max(e['load']):.1f}"
        if {"official", "hpcdd"} <= per_code.keys():
            for key in ("wall_median", "wall_min", "cpu_median"):
                s[f"ratio_{key}"] = s[f"official_{key}"] / s[f"hpcdd_{key}"]
        out.append(s)
    return out


def _ratio(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:.2f}x" if key in s else "-"


def _speed(s: dict[str, Any], code: str) -> str:
    if f"{code}_iters" not in s:
        return "-"
    return f"{s[code + '_wall_median']:.2f} ({s[code + '_wall_min']:.2f}); CPU {s[code + '_cpu_median']:.2f}"


def markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The ratio table with its machine, threads, commits and load."""
    def values(key: str) -> str:
        return ", ".join(sorted({str(r[key]) for r in rows}))

    head = rows[0]
    title = f"official DatasetCondensation vs hpcdd distill ({values('dataset')}, {values('threads')} thread(s))"
    lines = [f"# {title}", "",
             f"Machine: {head['host']}, {head['cpu_model']}, {head['cpus']} CPUs; torch {values('torch')}. "
             f"Commits: official {values('official_commit')}, hpcdd {values('hpcdd_commit')}. "
             f"Date: {values('date')}.", "",
             *(f"Command: `{c}`" for c in sorted({str(r['command']) for r in rows})), "",
             "| method | ipc | iterations timed (official / hpcdd) | official s/it: wall median (min); CPU median | "
             "hpcdd s/it: wall median (min); CPU median | official / hpcdd: wall median | wall min | CPU median | "
             "load1 (official / hpcdd) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        load = " / ".join(s.get(f"{c}_load1", "-") for c in CODES)
        iters = " / ".join(str(s.get(f"{c}_iters", "-")) for c in CODES)
        lines.append(f"| {s['method']} | {s['ipc']} | {iters} | {_speed(s, 'official')} | {_speed(s, 'hpcdd')} | "
                     f"{_ratio(s, 'ratio_wall_median')} | {_ratio(s, 'ratio_wall_min')} | "
                     f"{_ratio(s, 'ratio_cpu_median')} | {load} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": platform.node(), "cpu_model": model, "cpus": os.cpu_count()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("official", nargs="?", help="a DatasetCondensation checkout (needed unless --codes hpcdd)")
    ap.add_argument("--cases", default=DEFAULT_CASES,
                    help=f"METHOD:IPC:ITERS:WARMUP:REPEATS,... (default {DEFAULT_CASES})")
    ap.add_argument("--codes", default="official,hpcdd", help="which codes to run (official, hpcdd)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both codes (default 1)")
    ap.add_argument("--dataset", default="fashionmnist", help="hpcdd dataset name (official: fashionmnist, mnist)")
    ap.add_argument("--data-root", default=None, help="hpcdd's --data-root (default: the dataset's standard location)")
    ap.add_argument("--fmnist-src", default="/usr/share/datasets/fashion-mnist",
                    help="directory of the idx(.gz) files laid out for the official code")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_official.csv"))
    ap.add_argument("--append", action="store_true", help="keep --out's rows and add this run's (the table: all)")
    ap.add_argument("--summary", default=None, metavar="CSV", help="only (re)write CSV's ratio table (.md)")
    for hidden in ("--worker", "--case", "--result", "--save", "--strategy", "--official-code", "--official-data"):
        ap.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def measure(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    codes = [c for c in args.codes.split(",") if c]
    if not codes or set(codes) - set(CODES):
        raise SystemExit(f"bench_official: --codes takes official and/or hpcdd, got {args.codes!r}")
    cases = [Case.parse(c) for c in args.cases.split(",") if c.strip()]
    official_commit = "-"
    if "official" in codes:
        if not args.official or args.dataset not in OFFICIAL_DATASETS:
            raise SystemExit("bench_official: the official code needs its checkout as the first argument and "
                             f"--dataset one of {', '.join(OFFICIAL_DATASETS)}")
        src = Path(args.official)
        n = prepare_official(src, work / "official")
        prepare_idx_layout(Path(args.fmnist_src), work / "data", OFFICIAL_DATASETS[args.dataset])
        official_commit = git_head(src, OFFICIAL_FILES)
        print(f"official code: {src} at {official_commit}; torch-2 patch: {n} '.view(' -> '.reshape(' in networks.py")
    meta = {"official_commit": official_commit, "hpcdd_commit": git_head(ROOT, ["hpcdd", "bench/bench_official.py"]),
            **machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python bench/bench_official.py " + shlex.join(sys.argv[1:])}
    rows = []
    for case in cases:
        for repeat in range(case.repeats):
            order = codes if repeat % 2 == 0 else codes[::-1]
            rows += [run_once(code, case, repeat, args, work, meta) for code in order]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.summary:
        with open(args.summary, newline="") as f:
            rows = list(csv.DictReader(f))
        table = markdown(summarise(rows), rows)
        write_text(Path(args.summary).with_suffix(".md"), table)
        print(table, end="")
        return 0
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        rows = measure(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-official-") as tmp:
            rows = measure(args, Path(tmp))
    if args.append and Path(args.out).exists():
        with open(args.out, newline="") as f:
            rows = list(csv.DictReader(f)) + rows
    out = write_rows(args.out, rows)
    table = markdown(summarise(rows), rows)
    write_text(out.with_suffix(".md"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
