"""The ``hpcdd`` command: distill, run, evaluate, show, aggregate, table, plot, sweep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from hpcdd import __version__
from hpcdd.cli_args import add_config_flags, values_for
from hpcdd.config import ExecConfig, RunConfig, from_dict
from hpcdd.errors import ConfigError, HpcddError


def _load_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return data


def _configs(args: argparse.Namespace, file_data: dict[str, Any], where: str) -> tuple[RunConfig, ExecConfig]:
    """RunConfig/ExecConfig from a config file (an optional ``exec:`` block) and flags on top."""
    file_data = dict(file_data)
    exec_data = file_data.pop("exec", None) or {}
    if not isinstance(exec_data, dict):
        raise ConfigError(f"'exec' in {where} must be a mapping of execution keys")
    run = from_dict(RunConfig, {**file_data, **values_for(RunConfig, args)}, where=where)
    exe = from_dict(ExecConfig, {**exec_data, **values_for(ExecConfig, args)}, where=f"{where} exec")
    return run, exe


def _print_result(row: dict[str, Any]) -> None:
    from hpcdd.report.summary import result_table

    print(result_table(row))


# -- commands -----------------------------------------------------------------------------------


def cmd_distill(args: argparse.Namespace) -> int:
    file_data = _load_yaml(args.config) if args.config else {}
    cfg, exe = _configs(args, file_data, args.config or "command line")
    return _run(cfg, exe, Path(args.out), args.overwrite, not args.no_eval)


def cmd_run(args: argparse.Namespace) -> int:
    cfg, exe = _configs(args, _load_yaml(args.config), args.config)
    return _run(cfg, exe, Path(args.out), args.overwrite, True)


def _run(cfg: RunConfig, exe: ExecConfig, out: Path, overwrite: bool, evaluate: bool) -> int:
    from hpcdd.run import is_done, run_one
    from hpcdd.runtime.preempt import EXIT_INTERRUPTED, Interrupted, StopFlag

    if is_done(out) and not overwrite:
        print(f"{out} already holds a finished run; pass --overwrite to redo it", file=sys.stderr)
    try:
        with StopFlag() as stop:
            row = run_one(cfg, out, exe, evaluate=evaluate, should_stop=stop, overwrite=overwrite)
    except Interrupted as e:
        print(f"hpcdd: {stop.received.name if stop.received else 'stop'} received: {e}; "
              "run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if row is not None:
        _print_result(row)
    else:
        print(f"distilled set written to {out / 'synset.pt'}; evaluate it with: hpcdd evaluate {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hpcdd.run import evaluate_run

    exe = from_dict(ExecConfig, values_for(ExecConfig, args), where="command line")
    _print_result(evaluate_run(args.run_dir, exe))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from hpcdd.report.summary import show_run

    print(show_run(Path(args.run_dir), args.output))
    return 0


# -- parser -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as ONE line (``hpcdd distill: error: ...``) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hpcdd",
        description="Dataset distillation as an HPC job suite: distill, evaluate, sweep on Slurm, "
        "and aggregate results into tables. Run 'hpcdd COMMAND --help' for each command.",
    )
    p.add_argument("--version", action="version", version=f"hpcdd {__version__}")
    p.epilog = ("Exit codes: 0 success, 2 bad input (one line on stderr), 3 stopped by SIGUSR2/SIGTERM "
                "after writing a checkpoint (run the same command to resume).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("distill", help="distill one synthetic set, evaluate it, write a run dir",
                       description="Distill a synthetic set with one method, evaluate it by the DC "
                       "protocol and write result.json into --out. Resumes from the newest checkpoint "
                       "when --out already holds the same run.")
    d.add_argument("--out", required=True, help="run dir to create (or resume)")
    d.add_argument("--config", help="YAML file of config keys (flags override it)")
    d.add_argument("--overwrite", action="store_true", help="delete --out first if it holds another run")
    d.add_argument("--no-eval", action="store_true", help="stop after writing synset.pt")
    add_config_flags(d, RunConfig, "run config (defines the result)")
    add_config_flags(d, ExecConfig, "execution (does not change the result)")
    d.set_defaults(func=cmd_distill)

    r = sub.add_parser("run", help="run one config file into a run dir (what sbatch scripts call)",
                       description="Run the config in CONFIG (YAML with RunConfig keys and an optional "
                       "'exec:' block) into --out: distill, evaluate, write result.json and done.")
    r.add_argument("config", help="YAML config file")
    r.add_argument("--out", required=True, help="run dir to create (or resume)")
    r.add_argument("--overwrite", action="store_true", help="delete --out first if it holds another run")
    add_config_flags(r, ExecConfig, "execution (does not change the result)")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("evaluate", help="(re)evaluate a run dir's synset.pt by its config",
                       description="Train fresh models on RUN_DIR/synset.pt by the run's evaluation "
                       "config and write result.json and done.")
    e.add_argument("run_dir", help="a run dir written by 'hpcdd distill'")
    add_config_flags(e, ExecConfig, "execution")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("show", help="print a run's result and save a PNG grid of its images",
                       description="Print RUN_DIR's config and result, and save its synthetic images "
                       "as a PNG grid (one row per class).")
    s.add_argument("run_dir", help="a run dir")
    s.add_argument("-o", "--output", help="PNG path (default: RUN_DIR/synset.png)")
    s.set_defaults(func=cmd_show)

    from hpcdd.report.commands import register as register_report
    from hpcdd.sweep.commands import register as register_sweep

    register_sweep(sub)
    register_report(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HpcddError as e:
        print(f"hpcdd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcdd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
