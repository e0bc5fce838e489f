"""Shared test helpers: tiny configs on the digits dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from hpcdd.catalog import configs_from_flat
from hpcdd.config import EvalConfig, ExecConfig, RunConfig

TINY = dict(dataset="digits", ipc=2, iterations=6, batch_real=16)
TINY_EVAL = EvalConfig(epochs=2, n=1)
"""A 2-epoch, 1-model evaluation (protocol dc2)."""


def tiny(**kw) -> RunConfig:
    """A tiny run config from flat keys (method parameters by name, e.g. lr_img=...)."""
    run, _ = configs_from_flat({**TINY, **kw}, where="test")
    return run


QUIET = ExecConfig(progress=False, checkpoint_every=2)


def stop_after(n: int):
    """A ``should_stop`` that turns true at its n-th call (a preemption at a step boundary)."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


def synset(run_dir: Path) -> dict:
    """A run dir's saved synthetic set."""
    return torch.load(Path(run_dir) / "synset.pt", weights_only=True)


def result(run_dir: Path, ev: EvalConfig = TINY_EVAL) -> dict:
    """The result row of one evaluation of a run dir."""
    import json

    from hpcdd.catalog import eval_id

    return json.loads((Path(run_dir) / "eval" / eval_id(ev) / "result.json").read_text())


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
