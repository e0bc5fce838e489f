"""Sweeps at cluster scale (issue 15): the light commands on 5,000 / 10,000-run grids, timed as
subprocesses of the real CLI, now ("after") and at commit 3010f07 ("before").

    .venv/bin/python bench/bench_sweep_scale.py [--repeat 3] [--versions after,before]
        [--before-root /tmp/hpcdd-before] [--skip-slurm] [-o results/bench_sweep_scale.csv]

"before" needs a worktree of the old commit: ``git worktree add --detach /tmp/hpcdd-before 3010f07``.

Every command is run as ``.venv/bin/python -m hpcdd.cli ...`` (cwd and ``PYTHONPATH`` set to the
version's tree), ``--repeat`` times (the old real launch ``--before-launch-repeat`` times: it takes
minutes); a row holds the median and best wall time and the median and best user+sys CPU seconds of
the child (``getrusage(RUSAGE_CHILDREN)`` deltas, so the ``sbatch`` / ``squeue`` calls it makes
count too), the 1-minute load average sampled before each repeat (mean), and provenance.
``meets_target`` compares the median wall time with the target, ``meets_target_cpu`` the median CPU
time (the machine is shared: the CPU figure depends much less on the load).

Run dirs are fabricated directly (no distillation), as a finished run leaves them:

* after: ``run.json, config.yaml, log.txt, metrics.jsonl, checkpoint/, synset.pt, done, job.json,
  eval/<eval_id>/{config.yaml, models/*.json, result.json, done}``, ids from the grid's expansion
  (``hpcdd.sweep.grid.load_grid``: ``run_id``/``eval_id``), names from ``hpcdd.rundir``;
* before: the old layout, everything at the run dir's top (``config.yaml, log.txt, metrics.jsonl,
  checkpoint/, synset.pt, result.json, done, job.json``), ids from the old ``load_grid``.

The fabrication runs as a subprocess of this script under the version's ``PYTHONPATH``
(``--fabricate``), so each layout is written with that version's own ids. The bench ``os.sync()``s
its own writes and deletions before timing, so a timed command's ``syncfs`` does not flush them,
and byte-compiles each tree first (``compileall``), so no command pays for compiling.

Commands (targets from the issue): ``--help`` (0.5 s); on 10,000 finished runs ``sweep status``
(also with ``--json`` and ``--state failed``, after only),
a relaunch with ``--cluster slurm`` that submits nothing, ``aggregate -o`` (3 s each); on 5,000
runs ``sweep launch --dry-run --cluster slurm`` on an empty runs dir (3 s) and a real launch of held
jobs (``--begin=now+1hour``) on the local Slurm (30 s), each repeat in a fresh runs dir, its jobs
counted and cancelled afterwards (``scancel --name``). The local cluster is started with
``slurm/start.sh`` (``HPCDD_SLURM_CPUS`` as the tests set it, so a running test cluster is not
restarted); MaxArraySize must be 1001 (checked before each real launch: the Slurm tests restart
the cluster with smaller values, so do not run them at the same time).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
BEFORE_COMMIT = "3010f07"
SWEEP_STATUS, SWEEP_LAUNCH = "status", "launch"

COLUMNS = ("command", "version", "n_runs", "target_s", "wall_s", "wall_best_s", "cpu_s", "cpu_best_s",
           "meets_target", "meets_target_cpu", "repeats", "loadavg_1m", "commit", "host", "cpus",
           "date", "cmd", "notes")


def grid_text(name: str, seeds: int, held: bool = False) -> str:
    """4 ipc x 5 lr_img x 5 batch_real x ``seeds`` runs of DM (keys both versions accept)."""
    text = (f"name: {name}\n"
            "base: {method: dm, dataset: fashionmnist, iterations: 40}\n"
            "grid: {ipc: [1, 10, 20, 50], lr_img: [0.1, 0.3, 1.0, 3.0, 10.0], "
            "batch_real: [64, 128, 256, 512, 1024]}\n"
            f"seeds: {seeds}\n")
    if held:
        text += "slurm: {time_min: 10, additional: {begin: now+1hour}}\n"
    return text


# ----------------------------------------------------------------------------------------------
# fabricated run dirs (runs in a subprocess under the measured version's PYTHONPATH)


def _yaml(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=True)


def _metrics(per: dict[str, list[float]]) -> dict:
    row: dict = {}
    for i, (arch, accs) in enumerate(per.items()):
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
        if i == 0:
            row.update(acc_mean=mean, acc_std=std, accs=accs)
        row.update({f"acc_mean__{arch}": mean, f"acc_std__{arch}": std, f"accs__{arch}": accs})
    return row


PROV = {"hpcdd_version": "0.1.0", "git_commit": "0" * 40, "git_dirty": False, "torch_version": "2.14.1",
        "hostname": "node01", "device": "cpu x1"}
STAMP = "2026-11-30T00:00:00+00:00"
LOG_STAMP = "2026-11-30T00:00:00Z"


def _write(path: Path, text: str | bytes) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _common_files(d: Path, iterations: int) -> None:
    (d / "checkpoint").mkdir(parents=True, exist_ok=True)
    _write(d / "checkpoint" / f"ckpt-{iterations}.pt", b"\0" * 256)
    _write(d / "synset.pt", b"\0" * 1024)
    _write(d / "metrics.jsonl", "".join(json.dumps({"it": it, "loss": 1.0 / (it + 1)}) + "\n"
                                        for it in range(iterations)))


def fabricate_after(grid: Path, out: Path) -> int:
    from hpcdd import rundir
    from hpcdd.catalog import flat_run
    from hpcdd.config import eval_flat, to_dict
    from hpcdd.sweep.grid import load_grid

    sweep = load_grid(grid)
    for k, run in enumerate(sweep.runs):
        cfg, rid = run.config, run.run_id
        d = out / rid
        _common_files(d, cfg.iterations)
        _write(d / rundir.RUN_MARK, json.dumps({"kind": rundir.RUN_KIND, "run_id": rid, "created_at": STAMP}))
        _write(d / rundir.CONFIG, _yaml(to_dict(cfg)))
        log = [f"{LOG_STAMP} start run {rid}: dm on {cfg.dataset} ipc {cfg.ipc}, {cfg.iterations} iterations",
               f"{LOG_STAMP} checkpoint at iteration {cfg.iterations}",
               f"{LOG_STAMP} distillation finished in 12.3s; synset.pt written"]
        for ev, eid in zip(run.evals, run.eval_ids):
            e = rundir.eval_dir(d, eid)
            (e / rundir.MODELS).mkdir(parents=True)
            _write(e / rundir.CONFIG, _yaml(to_dict(ev)))
            accs = [round(0.5 + ((k * 7 + j) % 40) / 100, 4) for j in range(ev.n)]
            for arch in ev.models:
                for j, acc in enumerate(accs):
                    _write(rundir.model_file(d, eid, arch, j), json.dumps(
                        {"arch": arch, "k": j, "acc": acc, "finished_at": STAMP}))
            row = {"run_id": rid, "eval_id": eid, "protocol": ev.protocol, **flat_run(cfg), "ipc": cfg.ipc,
                   **eval_flat(ev), **_metrics({a: accs for a in ev.models}), "distill_seconds": 12.3,
                   "eval_seconds": 45.6, "wall_seconds": 60.0, "peak_rss_mb": 900.0,
                   "iterations_done": cfg.iterations, "sampler_subsampled": False,
                   "slurm_job_id": str(1000 + k), **PROV, "finished_at": STAMP}
            _write(e / rundir.RESULT, json.dumps(row))
            _write(e / rundir.DONE, eid + "\n")
            log.append(f"{LOG_STAMP} evaluation {eid} done: {ev.protocol} acc {row['acc_mean']:.4f} "
                       f"+- {row['acc_std']:.4f}")
        _write(d / rundir.LOG, "\n".join(log) + "\n")
        _write(d / rundir.DONE, json.dumps({"run_id": rid, "distill_seconds": 12.3,
                                            "iterations_done": cfg.iterations, "sampler": {},
                                            "finished_at": STAMP}))
        _write(d / rundir.JOB, json.dumps({"job_id": f"{1000 + k // 1001}_{k % 1001}", "cluster": "slurm",
                                           "sweep": sweep.name, "submitted_at": STAMP, "array": k // 1001,
                                           "covers": list(run.eval_ids)}))
    return len(sweep.runs)


def fabricate_before(grid: Path, out: Path) -> int:
    from hpcdd.config import to_dict
    from hpcdd.sweep.grid import load_grid

    sweep = load_grid(grid)
    for k, run in enumerate(sweep.runs):
        cfg, rid = run.config, run.run_id
        d = out / rid
        _common_files(d, cfg.iterations)
        _write(d / "config.yaml", _yaml(to_dict(cfg)))
        accs = [round(0.5 + ((k * 7 + j) % 40) / 100, 4) for j in range(cfg.eval_n)]
        row = {"run_id": rid, "protocol": cfg.protocol, **to_dict(cfg),
               **_metrics({a: accs for a in cfg.eval_models}),
               "distill_seconds": 12.3, "eval_seconds": 45.6, "peak_rss_mb": 900.0,
               "iterations_done": cfg.iterations, **PROV, "finished_at": STAMP}
        _write(d / "result.json", json.dumps(row))
        _write(d / "done", rid + "\n")
        _write(d / "log.txt", f"{LOG_STAMP} start run {rid}\n{LOG_STAMP} done: {cfg.protocol} acc "
                              f"{row['acc_mean']:.4f} +- {row['acc_std']:.4f}\n")
        _write(d / "job.json", json.dumps({"job_id": f"{1000 + k // 1001}_{k % 1001}", "cluster": "slurm",
                                           "sweep": sweep.name, "submitted_at": STAMP, "array": k // 1001}))
    return len(sweep.runs)


# ----------------------------------------------------------------------------------------------
# measuring


class Version:
    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        self.env = {**os.environ, "PYTHONPATH": str(root)}
        self.env.pop("HPCDD_ARTEFACTS", None)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def compile(self) -> None:
        """Byte-compile the tree first, so no timed command pays for compiling a changed module."""
        subprocess.run([str(PYTHON), "-m", "compileall", "-q", str(self.root / "hpcdd")], cwd=self.root,
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def commit(self) -> str:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=self.root, capture_output=True,
                             text=True).stdout.strip() or "unknown"
        if self.name == "after":
            mine = ["bench/bench_sweep_scale.py", "hpcdd/sweep", "hpcdd/catalog.py", "hpcdd/config.py",
                    "hpcdd/report/aggregate.py"]
            dirty = subprocess.run(["git", "status", "--porcelain", "--", *mine], cwd=self.root,
                                   capture_output=True, text=True).stdout.strip()
            out += "+uncommitted" if dirty else ""
        return out

    def cli(self, *args: str) -> list[str]:
        return [str(PYTHON), "-m", "hpcdd.cli", *args]


def timed(cmd: list[str], version: Version, stdout: Path,
          env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall s, user+sys CPU s of the child and its children, exit code, stderr tail)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(stdout, "wb") as out:
        proc = subprocess.run(cmd, cwd=version.root, env=env or version.env, stdout=out,
                              stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, proc.stderr.decode(errors="replace").strip()[-300:]


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:160] if lines else ""


def measure(label: str, version: Version, cmd: list[str], n_runs: int, target: float, repeat: int,
            work: Path, *, env: dict | None = None, before_each=None, after_each=None,
            note: str = "") -> dict:
    """Time ``cmd`` ``repeat`` times; one CSV row. ``before_each`` / ``after_each`` run outside the
    timing (``after_each`` may return a note, kept once)."""
    walls, cpus, loads, notes = [], [], [], []
    out = work / f"stdout-{version.name}-{label.replace(' ', '_')}.txt"
    for _ in range(repeat):
        if before_each:
            before_each()
        loads.append(os.getloadavg()[0])
        wall, cpu, rc, err = timed(cmd, version, out, env)
        extra = after_each() if after_each else None
        if extra and extra not in notes:
            notes.append(extra)
        if rc != 0:
            notes.append(f"exit {rc}: {err.splitlines()[-1] if err else ''}")
            break
        walls.append(wall)
        cpus.append(cpu)
        print(f"  {version.name:6s} {label:34s} wall {wall:7.2f}s cpu {cpu:7.2f}s load {loads[-1]:.2f}",
              file=sys.stderr)
    text = out.read_text(errors="replace") if out.exists() else ""
    arrays = [ln.strip() for ln in text.splitlines() if "array(s) of" in ln]
    if arrays:
        notes.append("plan: " + arrays[0].split(" (at most")[0][:120])
    tail = last_line(out)
    if tail:
        notes.append(f"output: {tail}")
    if note:
        notes.append(note)
    row = {"command": label, "version": version.name, "n_runs": n_runs, "target_s": target,
           "repeats": len(walls), "loadavg_1m": round(statistics.mean(loads), 2) if loads else "",
           "commit": version.commit(), "host": socket.gethostname(), "cpus": len(os.sched_getaffinity(0)),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "cmd": " ".join(cmd[1:]) + f"  (cwd {version.root}, PYTHONPATH={version.root})",
           "notes": "; ".join(notes)}
    if walls:
        row.update(wall_s=round(statistics.median(walls), 3), wall_best_s=round(min(walls), 3),
                   cpu_s=round(statistics.median(cpus), 3), cpu_best_s=round(min(cpus), 3))
        row.update(meets_target=row["wall_s"] <= target, meets_target_cpu=row["cpu_s"] <= target)
    else:
        row.update(wall_s="", wall_best_s="", cpu_s="", cpu_best_s="", meets_target="", meets_target_cpu="")
    return row


def max_array_size(env: dict) -> str:
    conf = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True).stdout
    lines = [ln for ln in conf.splitlines() if ln.startswith("MaxArraySize")]
    return lines[0].split("=", 1)[1].strip() if lines else "?"


def slurm_env() -> dict[str, str]:
    """Start (or find) the local cluster; the environment its clients need."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env.setdefault("HPCDD_SLURM_CPUS", "8")  # as tests/slurm_fixture.py: never restart their cluster
    env.pop("HPCDD_SLURM_MAX_ARRAY", None)  # MaxArraySize 1001, the default
    proc = subprocess.run(["bash", str(REPO / "slurm" / "start.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"slurm/start.sh failed: {proc.stderr[-2000:]}")
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            k, _, v = line[len("export "):].partition("=")
            out[k.strip()] = v.strip()
    if max_array_size({**os.environ, **out}) != "1001":
        raise RuntimeError("the local cluster's MaxArraySize is not 1001")
    return out


def fabricate(version: Version, grid: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    subprocess.run([str(PYTHON), str(Path(__file__).resolve()), "--fabricate", version.name, str(grid),
                    str(out)], cwd=version.root, env=version.env, check=True)
    os.sync()  # the bench's own writes: not flushed by (and billed to) a timed command's syncfs
    print(f"  {version.name}: fabricated {grid.stem} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)


def held_launch(version: Version, grid: Path, name: str, runs: Path, n: int, repeat: int, w: Path,
                env: dict) -> dict:
    """A real launch of held jobs (``--begin=now+1hour``), each repeat in a fresh runs dir; the jobs
    are counted and cancelled after each repeat."""

    def fresh() -> None:
        if runs.exists():
            shutil.rmtree(runs)
        runs.mkdir()
        os.sync()  # the previous repeat's deletions are not the next launch's to flush
        if max_array_size(env) != "1001":
            raise RuntimeError("MaxArraySize changed (a test restarted the cluster?); run again")

    def cancel() -> str:
        q = subprocess.run(["squeue", "-h", "-r", "--name", f"hpcdd-{name}", "-o", "%T %r"], env=env,
                           capture_output=True, text=True).stdout.split("\n")
        held = sum(1 for ln in q if ln.strip() == "PENDING BeginTime")
        subprocess.run(["scancel", "--name", f"hpcdd-{name}"], env=env, check=False)
        while subprocess.run(["squeue", "-h", "--name", f"hpcdd-{name}", "-o", "%i"], env=env,
                             capture_output=True, text=True).stdout.strip():
            time.sleep(1)
        return f"{held} array tasks queued PENDING (BeginTime), then cancelled"

    row = measure("sweep launch (real, held)", version,
                  version.cli("sweep", "launch", str(grid), "--out", str(runs), "--cluster", "slurm"),
                  n, 30.0, repeat, w, env=env, before_each=fresh, after_each=cancel,
                  note="local Slurm, MaxArraySize 1001, jobs held by --begin=now+1hour; fresh runs dir "
                  "each repeat")
    shutil.rmtree(runs, ignore_errors=True)
    return row


def bench_version(version: Version, args: argparse.Namespace, work: Path, senv: dict | None) -> list[dict]:
    rows = []
    w = work / version.name
    w.mkdir(parents=True, exist_ok=True)
    g_big, g_small, g_held = w / "scale10k.yaml", w / "scale5k.yaml", w / "scale5k_held.yaml"
    held_name = f"benchscale-held-{os.getpid()}"
    g_big.write_text(grid_text("benchscale10k", args.seeds))
    g_small.write_text(grid_text("benchscale5k", args.seeds // 2))
    g_held.write_text(grid_text(held_name, args.seeds // 2, held=True))
    n_big, n_small = 100 * args.seeds, 100 * (args.seeds // 2)
    rep = args.repeat if version.name == "after" else args.before_repeat
    layout = ("current layout: run.json, config.yaml, done, job.json, log, metrics, eval/<id>/{config.yaml,"
              " models/, result.json, done}" if version.name == "after" else
              "old layout: result.json + done + config.yaml + job.json (+ log, metrics) at the run dir top")
    slurm = {**version.env, **(senv or {})}
    version.compile()
    rows.append(measure("hpcdd --help", version, version.cli("--help"), 0, 0.5, rep, w))
    if "big" in args.parts:
        runs = w / "runs10k"
        fabricate(version, g_big, runs)
        status = version.cli("sweep", "status", str(g_big), "--out", str(runs))
        rows.append(measure("sweep status", version, status, n_big, 3.0, rep, w, env=slurm, note=layout))
        if version.name == "after":  # --json and --state are new (issue 22)
            rows.append(measure("sweep status --json", version, [*status, "--json"], n_big, 3.0, rep, w,
                                env=slurm, note=layout))
            rows.append(measure("sweep status --state failed", version, [*status, "--state", "failed"], n_big,
                                3.0, rep, w, env=slurm, note=f"no row shown; {layout}"))
        if senv is not None:
            relaunch = version.cli("sweep", "launch", str(g_big), "--out", str(runs), "--cluster", "slurm")
            rows.append(measure("sweep launch (nothing to submit)", version, relaunch, n_big, 3.0, rep, w,
                                env=slurm, note=f"--cluster slurm, every run finished; {layout}"))
        agg = version.cli("aggregate", str(runs), "-o", str(w / "agg.csv"))
        rows.append(measure("aggregate", version, agg, n_big, 3.0, rep, w, note=layout))
        shutil.rmtree(runs)
    if "small" in args.parts:
        empty = w / "runs5k-empty"
        empty.mkdir(exist_ok=True)
        rows.append(measure("sweep launch --dry-run", version,
                            version.cli("sweep", "launch", str(g_small), "--out", str(empty), "--dry-run",
                                        "--cluster", "slurm"),
                            n_small, 3.0, rep, w, env=slurm,
                            note="empty runs dir: every run 'not launched'"
                            + ("" if senv else "; no Slurm: partition not checked")))
        if senv is not None:
            launch_rep = rep if version.name == "after" else min(rep, args.before_launch_repeat)
            rows.append(held_launch(version, g_held, held_name, w / "runs5k-held", n_small, launch_rep, w,
                                    slurm))
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a small text table (ok: wall within target; cpu: only the CPU time is)."""
    head = (f"{'command':34s} {'version':7s} {'n':>6s} {'target':>6s} {'wall':>8s} {'cpu':>8s} "
            f"{'load':>5s}  ok")
    lines = [head, "-" * len(head)]
    for r in rows:
        def fmt(v):
            return f"{v:8.2f}" if isinstance(v, float) else f"{str(v):>8s}"
        ok = "yes" if r["meets_target"] is True else ("cpu" if r["meets_target_cpu"] is True else "no")
        lines.append(f"{r['command']:34s} {r['version']:7s} {r['n_runs']:6d} {r['target_s']:6.1f} "
                     f"{fmt(r['wall_s'])} {fmt(r['cpu_s'])} {r['loadavg_1m']!s:>5s}  {ok}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fabricate", nargs=3, metavar=("VERSION", "GRID", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=3, help="repeats per command, after (default 3)")
    p.add_argument("--before-repeat", type=int, default=3, help="repeats per command, before (default 3)")
    p.add_argument("--before-launch-repeat", type=int, default=1,
                   help="repeats of the old real launch (default 1: it takes minutes)")
    p.add_argument("--versions", default="after,before", help="after, before or both (default)")
    p.add_argument("--parts", default="big,small", help="big (10k: status, relaunch, aggregate), small (5k)")
    p.add_argument("--before-root", default="/tmp/hpcdd-before", help=f"worktree of {BEFORE_COMMIT}")
    p.add_argument("--seeds", type=int, default=100,
                   help="seeds of the big grid (x100 runs; default 100: 10,000 and 5,000 runs)")
    p.add_argument("--work", default="/tmp/hpcdd-bench-scale", help="scratch dir (deleted first)")
    p.add_argument("--skip-slurm", action="store_true", help="no local cluster: skip the Slurm rows")
    p.add_argument("-o", "--output", default=str(REPO / "results" / "bench_sweep_scale.csv"))
    args = p.parse_args(argv)
    if args.fabricate:
        name, grid, out = args.fabricate
        n = (fabricate_after if name == "after" else fabricate_before)(Path(grid), Path(out))
        print(f"{n} run dirs", file=sys.stderr)
        return 0
    args.parts = set(args.parts.split(","))
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    senv = None if args.skip_slurm else slurm_env()
    versions = {"after": Version("after", REPO), "before": Version("before", Path(args.before_root))}
    rows = []
    for name in args.versions.split(","):
        print(f"{name}:", file=sys.stderr)
        rows += bench_version(versions[name], args, work, senv)
    sys.path.insert(0, str(REPO))
    from hpcdd.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.output, buf.getvalue())
    print(table(rows))
    print(f"wrote {args.output}  ({platform.python_version()}, host {socket.gethostname()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
