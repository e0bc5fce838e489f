"""Several processes (issue 21): real processes on gloo give what one process gives; rank 0 alone
writes; a stop seen by one rank stops all at the same step; misconfigurations are one line."""

from __future__ import annotations

import json

import pytest
import torch

from hpcdd.errors import ConfigError
from hpcdd.runtime.dist import SINGLE, Dist, export_environment, launch_kind

from dist_worker import launch, launch_many
from helpers import synset

EXE = {"progress": False, "checkpoint_every": 2, "threads": 1, "dist_timeout_s": 30}
EVAL = {"epochs": 2, "n": 3}
DM = {"method": "dm", "iterations": 4}
DC = {"method": "dc", "iterations": 2, "outer_loop": 2, "inner_loop": 2}
DREAM = {"method": "dm", "sampler": "dream", "interval": 2, "iterations": 3, "net": "mlp"}
DM_BN = {"method": "dm", "iterations": 2, "net": "convnet3_bn"}
"""BatchNorm statistics mix the classes: every rank matches all of them (replicated)."""
GL = {"method": "global_local", "iterations": 3, "gan_steps": 4, "gan_width": 8, "gan_batch": 32, "match_batch": 20,
      "pool_warmup": 1, "pool": ["convnet3"], "local_layers": ["convnet3:block2"]}
"""global_local (and its GAN pretraining prerequisite) runs replicated on every rank (README)."""


def _job(method: str, root, **extra):
    return {"config": {"dm": DM, "dc": DC, "dream": DREAM, "global_local": GL, "dm_bn": DM_BN}[method],
            "dir": str(root / method), "exec": {**EXE, "artefact_root": str(root / "art")},
            "evals": {"dream": [], "dm_bn": [], "global_local": [{**EVAL, "ipc": 2}]}.get(method, [EVAL]), **extra}


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """DM (with DSA), DC and global_local (with its GAN pretraining) distilled and evaluated, and DM
    with DREAM's sampler distilled, by one process and, at the same time, by two (DM first stopped
    by a signal seen on rank 1 only, then resumed; then DM evaluated with 4 models, rank 1 stopped
    in its second model, then resumed)."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    methods = ["dc", "global_local", "dream", "dm_bn"]
    four = {**_job("dm", two), "dir": str(two / "four"), "evals": [{**EVAL, "n": 4}]}
    # should_stop calls on rank 1: 4 steps, 2 epochs of its first model (k=1), then k=3's first epoch
    solo, pair = launch_many([(1, [_job(m, one) for m in ["dm", *methods]], one),
                              (2, [_job("dm", two, stop={1: 2}), *(_job(m, two) for m in ["dm", *methods]),
                                   {**four, "stop": {1: 7}}, four], two)],
                             timeout=150)
    return one, two, solo, pair


def test_two_processes_distil_what_one_does(equivalence):
    one, two, solo, pair = equivalence
    for method in ("dm", "dc", "dream", "dm_bn"):
        a, b = synset(one / method)["images"], synset(two / method)["images"]
        assert (a - b).abs().max().item() <= 1e-5, method
    assert not torch.equal(synset(one / "dm")["images"], synset(one / "dc")["images"])
    gens = [torch.load(d / "global_local" / "generator.pt", weights_only=True)["weights"] for d in (one, two)]
    diff = {k: (gens[0][k] - gens[1][k]).abs().max().item() for k, v in gens[0].items() if v.is_floating_point()}
    # A bias feeding a BatchNorm has a gradient that is zero up to float rounding; Adam turns that
    # rounding into steps of about lr in either direction (4 pretraining steps at lr 1e-4, 3 at
    # 5e-6); splitting the batch changes the rounding, so those biases, and the running means that
    # absorb them, differ by ~steps x lr (a BatchNorm cancels them in training). The rest: <= 1e-5.
    cancelled = {k for k in diff if k.endswith("running_mean") or (k.endswith(".bias") and not k.startswith(("bn", "conv8")))}
    assert len(cancelled) == 16 and all(diff[k] <= 1e-3 for k in cancelled)
    assert all(diff[k] <= 1e-5 for k in set(diff) - cancelled), diff
    counts = [json.loads((d / "dream" / "done").read_text())["sampler"] for d in (one, two)]
    assert counts[0]["reclusterings"] == counts[1]["reclusterings"] == 20  # 10 classes, twice
    assert counts[0]["kmeans_iterations"] == counts[1]["kmeans_iterations"]
    rows = [[r["rows"] for r in records] for records in (solo[0][:3], pair[0][1:4], pair[1][1:4])]
    assert rows[0] == rows[1] == rows[2]  # the same evaluation on every rank


def test_a_stop_seen_by_one_rank_stops_every_rank_at_the_same_step(equivalence):
    _, two, _, pair = equivalence
    assert [r["error"] for r in (pair[0][0], pair[1][0])] == ["Interrupted", "Interrupted"]
    assert "error" not in pair[0][1] and "error" not in pair[1][1]
    assert pair[0][0]["message"] == pair[1][0]["message"] == "stopped after iteration 2; checkpoint written"
    log = (two / "dm" / "log.txt").read_text()
    assert "resumed at iteration 2" in log


def test_a_stopped_evaluation_keeps_every_rank_s_finished_models(equivalence):
    one, two, solo, pair = equivalence
    assert [r[-2].get("error") for r in pair] == ["Interrupted", "Interrupted"]
    log = (two / "four" / "log.txt").read_text()
    assert "resuming with 3 model(s) already done" in log
    accs = pair[0][-1]["rows"][0]["accs"]
    assert len(accs) == 4 and accs[:3] == solo[0][0]["rows"][0]["accs"]  # model k is model k, whatever n


def test_only_rank_zero_writes_one_set_of_files(equivalence):
    _, two, _, _ = equivalence
    log = (two / "dm" / "log.txt").read_text().splitlines()
    assert sum("start run" in line for line in log) == 1
    assert sum("checkpoint at iteration 2" in line for line in log) == 1
    rows = [json.loads(x) for x in (two / "dm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in rows if "loss" in r] == [0, 1, 2, 3]
    models = sorted(p.name for p in (two / "dm" / "eval").glob("*/models/*.json"))
    assert models == ["convnet3-0.json", "convnet3-1.json", "convnet3-2.json"]
    assert sum("evaluation" in line and "done" in line for line in log) == 1


def test_a_world_size_that_does_not_divide_the_classes_is_one_line(tmp_path):
    out = launch(3, [{"config": DM, "dir": str(tmp_path / "r"), "exec": EXE}], tmp_path)
    for rank in out:
        assert rank[0]["error"] == "ConfigError"
        assert rank[0]["message"] == ("3 processes cannot share 10 classes of digits evenly; "
                                      "use a number of processes that divides 10")
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_a_dead_rank_stops_the_others_with_one_line(tmp_path):
    exe = {**EXE, "dist_timeout_s": 20}
    out = launch(2, [{"config": DM, "dir": str(tmp_path / "r"), "exec": exe, "die": {1: 2}}], tmp_path, timeout=60)
    assert out[1] == []  # it died
    assert out[0][0]["error"] == "PeerLost"
    assert out[0][0]["message"].startswith("rank 0 of 2: all_reduce failed: another process died")
    assert "\n" not in out[0][0]["message"] and out[0][0]["seconds"] < 30


def test_a_missing_master_addr_is_one_line():
    with pytest.raises(ConfigError, match="^WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set: start the processes "
                                          "with torchrun, accelerate launch or srun"):
        export_environment({"RANK": "0", "WORLD_SIZE": "2"})


def test_the_launch_is_recognised():
    assert launch_kind({}) == "single"
    assert launch_kind({"RANK": "1", "WORLD_SIZE": "2"}) == "torchrun"
    assert launch_kind({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "2"}) == "slurm"
    assert launch_kind({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}) == "single"
    assert launch_kind({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "2", "RANK": "0", "WORLD_SIZE": "2"}) == "torchrun"
    assert export_environment({}) == "single"


def test_one_process_calls_no_collective():
    assert SINGLE.any(True) and not SINGLE.any(False)
    t = torch.ones(2)
    assert SINGLE.sum_(t) is t and SINGLE.gather(3) == [3] and SINGLE.from_main("x") == "x"
    assert SINGLE.shard(10, "classes") == range(10)
    assert Dist(1, 2).shard(10, "classes") == range(5, 10)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_the_cli_says_a_missing_master_addr_in_one_line_on_rank_zero_only(tmp_path, capsys, monkeypatch, rank):
    from hpcdd.cli import main

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    code = main(["distill", "--dataset", "digits", "--ipc", "1", "--iterations", "2", "--no-progress",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == ([] if rank == "1" else [
        "hpcdd: error: WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set: start the processes with torchrun, "
        "accelerate launch or srun (README 'Multi-process runs')"])
    assert not (tmp_path / "r").exists()


def test_the_grid_asks_slurm_for_tasks_and_nodes(tmp_path):
    from hpcdd.sweep.grid import SlurmSpec, load_grid
    from hpcdd.sweep.launch import make_executor

    from helpers import write_grid

    grid = write_grid(tmp_path / "g.yaml", {"name": "mp", "base": {"dataset": "digits", "ipc": 1},
                                            "slurm": {"tasks_per_node": 4, "gpus_per_node": 4, "nodes": 2}})
    params = make_executor("slurm", tmp_path / "runs", load_grid(grid))._executor.parameters
    assert (params["ntasks_per_node"], params["gpus_per_node"], params["nodes"]) == (4, 4, 2)
    single = write_grid(tmp_path / "s.yaml", {"name": "one", "base": {"dataset": "digits", "ipc": 1}})
    assert "ntasks_per_node" not in make_executor("slurm", tmp_path / "runs", load_grid(single))._executor.parameters
    for bad, msg in [({"tasks_per_node": 4, "gpus_per_node": 2}, "must equal gpus_per_node"),
                     ({"tasks_per_node": 2, "gpus_per_task": 1}, "asks for gpus_per_node"),
                     ({"tasks_per_node": 0}, "tasks_per_node must be >= 1")]:
        with pytest.raises(ConfigError, match=msg):
            SlurmSpec(**bad)


def test_a_slurm_step_of_two_tasks_is_exported_once(monkeypatch):
    import os

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                "SUBMITIT_EXECUTOR"):  # a plain srun step (submitit's own jobs set SUBMITIT_EXECUTOR)
        monkeypatch.setenv(key, "x")  # so that monkeypatch restores what export_environment sets
        monkeypatch.delenv(key)
    slurm = {"SLURM_JOB_ID": "42", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1",
             "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
             "CUDA_VISIBLE_DEVICES": "0,1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert export_environment() == "slurm"
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "CUDA_VISIBLE_DEVICES")}
    assert got == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost",
                   "CUDA_VISIBLE_DEVICES": "0,1"}  # Accelerate takes GPU LOCAL_RANK of those the task sees
    port = os.environ["MASTER_PORT"]
    assert export_environment() == "torchrun" and os.environ["MASTER_PORT"] == port  # nothing exported twice


def test_the_cpu_sync_batchnorm_is_batchnorm_over_the_whole_batch(tmp_path, capfd):
    from dist_worker import batchnorm_halves

    halves = batchnorm_halves(tmp_path)
    assert "Warning" not in capfd.readouterr().err  # no deprecated collective (a FutureWarning per rank)
    torch.manual_seed(0)
    x = (torch.randn(8, 3, 4, 4) * 3 + 1).requires_grad_(True)
    bn = torch.nn.BatchNorm2d(3)
    bn.weight.data.uniform_(0.5, 1.5)
    y = bn(x)
    (y * torch.arange(1.0, 5.0).repeat(2).view(8, 1, 1, 1)).sum().backward()
    assert halves[0]["type"] == "GlooBatchNorm"
    assert torch.allclose(torch.cat([h["y"] for h in halves]), y, atol=1e-5)
    assert torch.allclose(torch.cat([h["dx"] for h in halves]), x.grad, atol=1e-5)
    assert torch.allclose(halves[0]["dw"] + halves[1]["dw"], bn.weight.grad, atol=1e-4)  # summed: DDP averages
    assert torch.allclose(halves[0]["running_var"], bn.running_var, atol=1e-6)
