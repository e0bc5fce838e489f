"""The ``hpcdd`` command: distill, run, evaluate, show, sweep, aggregate, table, plot.

Parsing and ``--help`` import neither torch nor any method (flags come from the torch-free specs);
each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from hpcdd import __version__
from hpcdd.cli_args import add_config_flags, add_run_flags, eval_values, exec_values
from hpcdd.config import EvalConfig, ExecConfig, RunConfig, from_dict
from hpcdd.errors import ConfigError, HpcddError
from hpcdd.runtime.preempt import EXIT_INTERRUPTED, Interrupted, StopFlag

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""OS errors of a write that the CLI reports as one line (exit 2) wherever they were raised."""


def _load_yaml(path: str) -> dict[str, Any]:
    from hpcdd.yamlfile import load_yaml_file

    data = load_yaml_file(path, what="config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return data


def _configs(args: argparse.Namespace, file_data: dict[str, Any],
             where: str) -> tuple[RunConfig, EvalConfig, ExecConfig]:
    """The configs from a config file (flat keys and an optional ``exec:`` block), flags on top."""
    from hpcdd.catalog import configs_from_flat, flat_names

    file_data = dict(file_data)
    exec_data = file_data.pop("exec", None) or {}
    if not isinstance(exec_data, dict):
        raise ConfigError(f"'exec' in {where} must be a mapping of execution keys")
    flags = {k: v for k, v in vars(args).items() if k in set(flat_names())}
    run, ev = configs_from_flat({**file_data, **flags}, where=where)
    exe = from_dict(ExecConfig, {**exec_data, **exec_values(args)}, where=f"{where} exec")
    return run, ev, exe


def _say(text: str, file: Any = None) -> None:
    """Print ``text`` on the main process only (several processes: one copy, not one per rank)."""
    from hpcdd.runtime.dist import main_process

    if main_process():
        print(text, file=file if file is not None else sys.stdout)


def _print_rows(rows: list[dict[str, Any]]) -> None:
    from hpcdd.report.summary import result_table

    for row in rows:
        _say(result_table(row))


# -- commands -----------------------------------------------------------------------------------


def cmd_distill(args: argparse.Namespace) -> int:
    file_data = _load_yaml(args.config) if args.config else {}
    cfg, ev, exe = _configs(args, file_data, args.config or "command line")
    return _run(cfg, ev, exe, args.out, args.overwrite, not args.no_eval, args.stop)


def cmd_run(args: argparse.Namespace) -> int:
    cfg, ev, exe = _configs(args, _load_yaml(args.config), args.config)
    return _run(cfg, ev, exe, args.out, args.overwrite, True, args.stop)


def _out_dir(text: str) -> Path:
    if not text.strip():
        raise ConfigError("--out must name a directory (got an empty string)")
    return Path(text)


def _stopped_early(stop: StopFlag) -> int | None:
    """Exit code 3 and one line if a stop signal came before the work began (while loading)."""
    if not stop():
        return None
    print(f"hpcdd: {stop.received.name} received before the work began; nothing was written; "
          "run the same command again", file=sys.stderr)
    return EXIT_INTERRUPTED


def _run(cfg: RunConfig, ev: EvalConfig, exe: ExecConfig, out: str, overwrite: bool, evaluate: bool,
         stop: StopFlag) -> int:
    out_dir = _out_dir(out)
    from hpcdd.run import run_one  # torch: seconds; a signal meanwhile is held by ``stop``

    if (code := _stopped_early(stop)) is not None:
        return code
    try:
        rows = run_one(cfg, out_dir, exe, evals=(ev,), evaluate=evaluate, should_stop=stop,
                       overwrite=overwrite)
    except Interrupted as e:
        _say(f"hpcdd: {stop.received.name if stop.received else 'stop'} received: {e}; "
             "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if rows:
        _print_rows(rows)
    else:
        _say(f"distilled; evaluate it with: hpcdd evaluate {out_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    ev = from_dict(EvalConfig, eval_values(args), where="command line")
    exe = from_dict(ExecConfig, exec_values(args), where="command line")
    from hpcdd.run import evaluate_run

    stop = args.stop
    if (code := _stopped_early(stop)) is not None:
        return code
    try:
        row = evaluate_run(args.run_dir, ev, exe, should_stop=stop)
    except Interrupted as e:
        _say(f"hpcdd: {stop.received.name if stop.received else 'stop'} received: {e}; "
             "run the same command again to resume at the next model", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_rows([row])
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """A fixed synthetic set drawn from a generator run: ipc per class, from seeded noise."""
    from hpcdd.report.summary import generate_synset

    path, n = generate_synset(Path(args.run_dir), args.ipc, Path(args.out), seed=args.seed)
    print(f"wrote {path}: {n} images ({args.ipc} per class, seed {args.seed})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from hpcdd.report.summary import show_run

    print(show_run(Path(args.run_dir), args.output, ipc=args.ipc, seed=args.seed, scale=args.scale,
                   max_per_class=args.max_per_class or None))
    return 0


# -- parser -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as ONE line (``hpcdd distill: error: ...``) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _names_epilog() -> str:
    """The registered names, for --help (specs are torch-free; datasets and nets are listed by the
    torch-free catalog of names their modules register)."""
    from hpcdd.names import DATASET_NAMES, NET_NAMES
    from hpcdd.specs import METHODS, SAMPLERS

    return (f"methods: {', '.join(METHODS.names())}. samplers: {', '.join(SAMPLERS.names())}. "
            f"datasets: {', '.join(DATASET_NAMES)}. nets: {', '.join(NET_NAMES)}.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hpcdd",
        description="Dataset distillation as an HPC job suite: distill, evaluate, sweep on Slurm, "
        "and aggregate results into tables. Run 'hpcdd COMMAND --help' for each command.",
        epilog="Exit codes: 0 success, 2 bad input (one line on stderr), 3 stopped by SIGUSR2/SIGTERM "
        "after writing a checkpoint (run the same command to resume), 130 interrupted (Ctrl-C).",
    )
    p.add_argument("--version", action="version", version=f"hpcdd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    names = _names_epilog()

    d = sub.add_parser("distill", help="distill with one method, evaluate, write a run dir",
                       description="Distill with one method (building its prerequisites first, or "
                       "reusing them from the artefact root), evaluate the result by the DC protocol "
                       "and write the run dir --out. Resumes when --out holds the same run; a "
                       "finished run is not redone.", epilog=names)
    d.add_argument("--out", required=True, help="run dir to create (or resume)")
    d.add_argument("--config", help="YAML file of config keys (flags override it)")
    d.add_argument("--overwrite", action="store_true",
                   help="delete hpcdd's files in --out first if it holds another run")
    d.add_argument("--no-eval", action="store_true", help="stop after the distillation's artefact")
    add_run_flags(d)
    add_config_flags(d, ExecConfig, "execution (does not change the result)")
    d.set_defaults(func=cmd_distill, stops=True)

    r = sub.add_parser("run", help="run one config file into a run dir (what sbatch scripts call)",
                       description="Run the config in CONFIG (YAML with flat config keys and an optional "
                       "'exec:' block) into --out: prerequisites, distillation, evaluation.", epilog=names)
    r.add_argument("config", help="YAML config file")
    r.add_argument("--out", required=True, help="run dir to create (or resume)")
    r.add_argument("--overwrite", action="store_true",
                   help="delete hpcdd's files in --out first if it holds another run")
    add_config_flags(r, ExecConfig, "execution (does not change the result)")
    r.set_defaults(func=cmd_run, stops=True)

    e = sub.add_parser("evaluate", help="add an evaluation to a finished distillation (no re-distilling)",
                       description="Train fresh models on RUN_DIR's artefact by the given evaluation "
                       "config, into RUN_DIR/eval/<eval_id>/. Each finished model is saved at once: an "
                       "interrupted evaluation resumes at the next model.", epilog=names)
    e.add_argument("run_dir", help="a run dir written by 'hpcdd distill' or a sweep")
    add_config_flags(e, EvalConfig, "evaluation", prefix="eval_")
    add_config_flags(e, ExecConfig, "execution")
    e.set_defaults(func=cmd_evaluate, stops=True)

    g = sub.add_parser("generate", help="draw a fixed synthetic set from a generator run (any ipc, no retraining)",
                       description="Write ipc images per class drawn from RUN_DIR's generator (dim, "
                       "global_local) to --out, as a synset.pt (images normalised like the real data, "
                       "labels, info). The same seed gives the same images.")
    g.add_argument("run_dir", help="a finished generator run dir")
    g.add_argument("--ipc", type=int, required=True, help="images per class")
    g.add_argument("--out", required=True, help="the .pt file to write (refused if it exists)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("show", help="print a run's results and save a PNG grid of its images",
                       description="Print RUN_DIR's evaluation results (or say it is not evaluated) "
                       "and save its images as a PNG grid, one row per class with the class names. "
                       "A generator run draws --ipc images per class from seeded noise.")
    s.add_argument("run_dir", help="a run dir")
    s.add_argument("-o", "--output", help="PNG path (default: RUN_DIR/synset.png)")
    s.add_argument("--ipc", type=int, default=None, help="generator runs: images per class to draw (default 10)")
    s.add_argument("--seed", type=int, default=0, help="generator runs: noise seed (default 0)")
    s.add_argument("--scale", type=int, default=4, help="upscale factor of each tile (default 4)")
    s.add_argument("--max-per-class", type=int, default=10,
                   help="show at most this many images per class (default 10; 0: all)")
    s.set_defaults(func=cmd_show)

    from hpcdd.report.commands import register as register_report
    from hpcdd.sweep.commands import register as register_sweep

    register_sweep(sub)
    register_report(sub)
    return p


def main(argv: Sequence[str] | None = None, stop: StopFlag | None = None) -> int:
    """Run ``hpcdd ARGV``; the exit code. ``stop``: a :class:`StopFlag` already installed by the
    console script before any slow import (:mod:`hpcdd.console`); otherwise one is installed here,
    before parsing. Commands that checkpoint (distill, run, evaluate) stop on it; for any other
    the default handlers are restored once the command is known."""
    stop = stop if stop is not None else StopFlag().__enter__()
    try:
        args = _parse(argv, stop)
        return int(args.func(args) or 0)
    except HpcddError as e:
        from hpcdd.runtime.dist import prints_error

        if prints_error(e):  # several processes: one line, not one per rank
            print(f"hpcdd: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        from hpcdd.io import os_error_line

        print(f"hpcdd: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcdd: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    finally:
        stop.__exit__(None, None, None)


def _parse(argv: Sequence[str] | None, stop: StopFlag) -> argparse.Namespace:
    """The parsed command line (a bad ``$HPCDD_PLUGINS`` module: ``HpcddError``), with ``stop``
    attached for the commands that checkpoint and released for the others."""
    try:
        args = build_parser().parse_args(argv)
    except BaseException:
        _release(stop)
        raise
    if not getattr(args, "stops", False):
        _release(stop)
    args.stop = stop
    return args


def _release(stop: StopFlag) -> None:
    """Give the signals back to their default handlers; one that came meanwhile takes effect now."""
    stop.__exit__(None, None, None)
    if stop.received is not None:
        print(f"hpcdd: {stop.received.name} received; stopping", file=sys.stderr, flush=True)
        signal.raise_signal(stop.received)


if __name__ == "__main__":
    sys.exit(main())
