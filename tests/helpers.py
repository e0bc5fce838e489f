"""Shared test helpers: tiny configs on the digits dataset."""

from __future__ import annotations

from hpcdd.config import ExecConfig, RunConfig

TINY = dict(dataset="digits", ipc=2, iterations=6, batch_real=16, eval_epochs=2, eval_n=1)


def tiny(**kw) -> RunConfig:
    return RunConfig(**{**TINY, **kw})


QUIET = ExecConfig(progress=False, checkpoint_every=2)
