"""Reusable access to the local Slurm cluster of ``slurm/start.sh`` for tests.

    from slurm_fixture import SlurmClusterError, ensure_cluster

    @pytest.fixture(scope="module")
    def slurm_env():
        try:
            env = ensure_cluster()          # {"SLURM_CONF": ".../etc/slurm.conf"}
        except SlurmClusterError as e:      # never skip: a broken cluster is a failure
            pytest.fail(str(e), pytrace=False)  # (test_slurm_cluster.py: same, outside except)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)             # submitit/sbatch/sacct read os.environ
            yield env

``ensure_cluster`` runs ``slurm/start.sh`` once per test session (it is
idempotent and returns in well under a second when the cluster is already
up). It must run as root; on a fresh machine the first call also apt-installs
Slurm, munge and mariadb (~35 s). The cluster is left running after the tests.
State lives in ``$HPCDD_SLURM_DIR`` (default ``~/.hpcdd-slurm``).

The test cluster advertises ``HPCDD_SLURM_CPUS`` (default ``TEST_CPUS`` = 8) CPUs, more than
this 2-core machine has, so that every task of a 4-task array runs at once; ``slurm/start.sh``
alone advertises the machine's real core count.

``ensure_cluster(max_array_size=N)`` restarts slurmctld/slurmd with
``MaxArraySize=N`` (~4 s) so a test can exercise array chunking; call
``ensure_cluster()`` afterwards to return to the default (1001).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START = REPO / "slurm" / "start.sh"
STOP = REPO / "slurm" / "stop.sh"


TEST_CPUS = "8"
"""CPUs the test cluster advertises (``HPCDD_SLURM_CPUS``) unless the environment sets it."""


class SlurmClusterError(RuntimeError):
    """The local cluster could not be started; the message holds the start log tail."""


_lock = threading.Lock()
_applied: tuple[str, dict[str, str]] | None = None  # (MaxArraySize key, env) of the last start


def state_dir() -> Path:
    return Path(os.environ.get("HPCDD_SLURM_DIR") or Path.home() / ".hpcdd-slurm")


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


def ensure_cluster(max_array_size: int | None = None, timeout: float = 900) -> dict[str, str]:
    """Make sure the local cluster is up; return the env vars clients need.

    Returns ``{"SLURM_CONF": path}``; put it into ``os.environ`` (submitit
    passes its own environment to sbatch and sacct). Raises
    ``SlurmClusterError`` with the tail of the start script's output if the
    cluster cannot be started within ``timeout`` seconds.
    """
    global _applied
    env = dict(os.environ)
    env.pop("SLURM_CONF", None)
    if max_array_size is not None:
        env["HPCDD_SLURM_MAX_ARRAY"] = str(int(max_array_size))
    # start.sh advertises the machine's cores; the tests need 4 one-thread tasks running at once
    # (preemption of every task of an array), so they ask for more, explicitly
    env.setdefault("HPCDD_SLURM_CPUS", TEST_CPUS)
    key = env.get("HPCDD_SLURM_MAX_ARRAY", "")
    with _lock:
        if _applied is not None and _applied[0] == key:
            return dict(_applied[1])
        try:
            proc = subprocess.run(
                ["bash", str(START)], env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise SlurmClusterError(
                f"slurm/start.sh did not finish within {timeout:.0f} s; output tail:\n{_tail(err)}"
            ) from None
        except OSError as e:
            raise SlurmClusterError(f"cannot run {START}: {e}") from None
        if proc.returncode != 0:
            raise SlurmClusterError(
                f"slurm/start.sh failed (exit {proc.returncode}); output tail:\n"
                f"{_tail(proc.stderr)}\n{_tail(proc.stdout, 10)}"
            )
        out: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                k, _, v = line[len("export ") :].partition("=")
                out[k.strip()] = v.strip()
        if "SLURM_CONF" not in out or not Path(out["SLURM_CONF"]).is_file():
            raise SlurmClusterError(
                f"slurm/start.sh printed no usable SLURM_CONF line; stdout:\n{proc.stdout}\n"
                f"stderr tail:\n{_tail(proc.stderr)}"
            )
        _applied = (key, out)
        return dict(out)


@pytest.fixture(scope="module")
def slurm_env():
    """The cluster's environment (SLURM_CONF, ...) set in ``os.environ`` for a test module: submitit,
    sinfo, squeue and sacct read it, and jobs inherit it. One torch thread per task: several
    2-thread processes spin-waiting on 2 cores run ~40x slower (results depend on the thread count,
    so in-process reference runs use one thread too)."""
    try:
        env = ensure_cluster()
    except SlurmClusterError as e:
        pytest.fail(str(e), pytrace=False)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv("OMP_NUM_THREADS", "1")
        yield env
