"""Shared test helpers: tiny configs on the digits dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from hpcdd.config import ExecConfig, RunConfig

TINY = dict(dataset="digits", ipc=2, iterations=6, batch_real=16, eval_epochs=2, eval_n=1)


def tiny(**kw) -> RunConfig:
    return RunConfig(**{**TINY, **kw})


QUIET = ExecConfig(progress=False, checkpoint_every=2)


def synset(run_dir: Path) -> dict:
    """A run dir's saved synthetic set."""
    return torch.load(Path(run_dir) / "synset.pt", weights_only=True)


def write_grid(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def sweep_cli(*argv: str) -> int:
    """``hpcdd sweep ARGV`` in this process; HpcddErrors propagate to the test."""
    from hpcdd.sweep.commands import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["sweep", *argv])
    return args.func(args)
