"""The local Slurm cluster (slurm/start.sh): submitit array jobs, accounting, signals.

These tests start the cluster themselves (as root; apt-installs it on a fresh
machine) and fail -- never skip -- with the start log when it cannot start.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import submitit

from slurm_fixture import TEST_CPUS, SlurmClusterError, ensure_cluster

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_env():
    try:
        env = ensure_cluster()
    except SlurmClusterError as e:
        err = str(e)
    else:
        err = None
    if err is not None:
        pytest.fail(err, pytrace=False)  # never skip: a broken cluster is a failure
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)  # submitit calls sbatch/sacct with os.environ
        yield env


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def sacct_states(job_id: str) -> dict[str, str]:
    out = sh("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State").stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            squeue = sh("squeue", check=False).stdout
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\nsqueue:\n{squeue}")
        time.sleep(interval)


def test_cluster_shape(slurm_env):
    conf = sh("scontrol", "show", "config").stdout
    expected = os.environ.get("HPCDD_SLURM_MAX_ARRAY", "1001")
    assert f"MaxArraySize            = {expected}" in conf
    parts = sh("sinfo", "-h", "-o", "%P %a %T %c").stdout.split("\n")
    names = {p.split()[0] for p in parts if p.strip()}
    assert names == {"debug*", "cpu"}  # '*' marks the default partition
    cpus = os.environ.get("HPCDD_SLURM_CPUS") or TEST_CPUS  # the tests' explicit override
    assert all(int(p.split()[3]) == int(cpus) for p in parts if p.strip())


def test_submitit_array_job(slurm_env, tmp_path):
    def task(x):
        import os

        return x * x, os.environ["SLURM_ARRAY_TASK_ID"], os.environ["SLURM_JOB_PARTITION"]

    executor = submitit.AutoExecutor(folder=tmp_path)
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition="debug", timeout_min=5, slurm_array_parallelism=4)
    t0 = time.monotonic()
    jobs = executor.map_array(task, [1, 2, 3, 4])
    array_ids = {j.job_id.split("_")[0] for j in jobs}
    assert len(array_ids) == 1, [j.job_id for j in jobs]
    (array_id,) = array_ids

    def all_done():
        return all(j.done() for j in jobs)

    try:
        wait_for(all_done, 120, "the submitit array to finish", interval=0.5)
    except AssertionError as e:
        logs = "\n".join(f"--- {j.job_id} stderr:\n{j.stderr()}" for j in jobs)
        raise AssertionError(f"{e}\n{logs}") from None
    results = [j.result() for j in jobs]
    elapsed = time.monotonic() - t0
    assert [r[0] for r in results] == [1, 4, 9, 16]
    assert [r[1] for r in results] == ["0", "1", "2", "3"]
    assert {r[2] for r in results} == {"debug"}

    # Accounting: sacct (which submitit relies on for states) sees every task COMPLETED.
    want = {f"{array_id}_{i}": "COMPLETED" for i in range(4)}
    wait_for(lambda: sacct_states(array_id) == want, 60, f"sacct to show {want}")
    print(f"submitit 4-task array: results after {elapsed:.1f} s")


@pytest.mark.parametrize(
    "where, scancel_args",
    [("step", []), ("batch", ["--batch"])],
    ids=["srun-step", "batch-shell"],
)
def test_scancel_usr2_reaches_running_job(slurm_env, tmp_path, where, scancel_args):
    """`scancel --signal=USR2 JOB` signals the job's *steps* (what srun / submitit run);
    a trap in the batch shell itself needs `scancel --signal=USR2 --batch JOB`."""
    out = tmp_path / "job.out"
    loop = tmp_path / "loop.sh"
    loop.write_text(
        "trap 'echo GOT_USR2 $(date +%s.%N); exit 0' USR2\n"
        "echo READY\n"
        "while :; do sleep 0.05; done\n"
    )
    body = f"srun bash {loop}" if where == "step" else f". {loop}"
    script = tmp_path / "sig.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH -t 2\n#SBATCH -o {out}\n{body}\n")
    job_id = sh("sbatch", "--parsable", str(script)).stdout.strip().split(";")[0]
    try:
        wait_for(lambda: out.exists() and "READY" in out.read_text(), 60, "the job to start")
        t0 = time.time()
        sh("scancel", "--signal=USR2", *scancel_args, job_id)
        text = wait_for(lambda: "GOT_USR2" in out.read_text() and out.read_text(), 10, "USR2 in the job")
        got = float(text.split("GOT_USR2")[1].split()[0])
        print(f"USR2 to {where}: delivered {got - t0:.3f} s after scancel")
        wait_for(lambda: sacct_states(job_id).get(job_id) == "COMPLETED", 60, "the job to complete")
    finally:
        sh("scancel", job_id, check=False)


def test_max_array_size_knob(slurm_env, tmp_path):
    """ensure_cluster(max_array_size=N) really limits arrays (needs a ctld restart, not reconfigure)."""
    try:
        ensure_cluster(max_array_size=5)
        ok = sh("sbatch", "--parsable", "--array=0-4", "-o", "/dev/null", "--wrap=true", check=False)
        too_big = sh("sbatch", "--parsable", "--array=0-5", "-o", "/dev/null", "--wrap=true", check=False)
        assert ok.returncode == 0, ok.stderr
        assert too_big.returncode != 0 and "Invalid job array specification" in too_big.stderr
        # let the 5 tasks leave the queue before the restart below: a task launched while slurmd
        # restarts is lost but stays RUNNING for the controller, holding a CPU of this small node
        array = ok.stdout.strip().split(";")[0]
        wait_for(lambda: not sh("squeue", "-h", "-j", array, check=False).stdout.strip(), 60,
                 "the 5-task array to finish")
    finally:
        ensure_cluster()  # back to the default for later tests
    expected = os.environ.get("HPCDD_SLURM_MAX_ARRAY", "1001")
    assert f"MaxArraySize            = {expected}" in sh("scontrol", "show", "config").stdout
