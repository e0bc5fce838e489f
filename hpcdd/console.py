"""The ``hpcdd`` console script (and ``python -m hpcdd``): catch SIGTERM/SIGUSR2 from the start.

Importing the CLI and then torch takes a second or more; a signal in that time (a job cancelled
or preempted as it starts) used to kill the process with no message. So this module, which
imports nothing but :mod:`hpcdd.runtime.preempt`, installs the flag-only stop handler first and
hands it to :func:`hpcdd.cli.main`: a command that checkpoints exits with code 3 and one line,
any other gets the signal's default action (after one line) once it is known.
"""

from __future__ import annotations

import sys

from hpcdd.runtime.preempt import StopFlag


def main() -> int:
    stop = StopFlag().__enter__()
    from hpcdd.cli import main as cli_main

    return cli_main(sys.argv[1:], stop=stop)


__all__ = ["main"]
