"""Grid files: deterministic expansion, identities, one-line ConfigErrors, and launch/*.yaml."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml

from hpcdd.catalog import configs_from_flat, resolve, run_id
from hpcdd.config import ExecConfig
from hpcdd.errors import ConfigError
from hpcdd.sweep.grid import SlurmSpec, expand_grid, load_grid, point_values
from hpcdd.sweep.launch import array_sizes, make_job
from hpcdd.sweep.scheduler import _parse_lines, expand_task_ids
from hpcdd.sweep.state import TaskState, build_tasks
from hpcdd.sweep.tables import plan_table, state_counts, status_table

REPO = Path(__file__).resolve().parents[1]
LAUNCH = sorted((REPO / "launch").glob("*.yaml"))
TINY = {"dataset": "digits", "method": "dm", "ipc": 1, "iterations": 6, "batch_real": 16,
        "eval_epochs": 2, "eval_n": 1}



def grid(**kw):
    return {"name": "t", "base": dict(TINY), **kw}


def ids(sweep):
    return [c.run_id for c in sweep.cells]


# ----------------------------------------------------------------------------------------------
# expansion


def test_cartesian_product_in_file_order_last_key_fastest():
    s = expand_grid(grid(grid={"ipc": [1, 2], "seed": [0, 1, 2]}))
    assert [(r.config.ipc, r.config.seed) for r in s.cells] == [
        (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert s.axes == ("ipc", "seed")
    assert [r.index for r in s.cells] == list(range(6))


def test_each_run_is_the_resolved_merged_config_and_its_run_id():
    s = expand_grid(grid(grid={"ipc": [1, 3]}))
    for r, ipc in zip(s.cells, [1, 3]):
        expected = resolve(configs_from_flat({**TINY, "ipc": ipc})[0])
        assert r.config == expected and r.run_id == run_id(expected)
        assert r.eval.epochs == 2 and r.eval.n == 1
        assert r.config.dsa_strategy is not None  # resolved
    assert ids(expand_grid(grid(grid={"ipc": [1, 3]}))) == ids(s)  # deterministic


def test_grid_list_is_a_union_of_products():
    s = expand_grid(grid(grid=[{"ipc": [1, 2]}, {"ipc": [3], "seed": [5, 6]}]))
    assert [(r.config.ipc, r.config.seed) for r in s.cells] == [(1, 0), (2, 0), (3, 5), (3, 6)]
    assert s.axes == ("ipc", "seed")


def test_zip_rows_cross_the_grid_and_seeds_are_innermost():
    s = expand_grid(grid(grid={"ipc": [1, 2]}, zip={"method": ["dm", "random"], "lr_img": [0.5, None]},
                         seeds=2))
    got = [(r.config.ipc, r.config.method, r.point.get("lr_img"), r.config.seed) for r in s.cells]
    assert got == [(1, "dm", 0.5, 0), (1, "dm", 0.5, 1), (1, "random", None, 0), (1, "random", None, 1),
                   (2, "dm", 0.5, 0), (2, "dm", 0.5, 1), (2, "random", None, 0), (2, "random", None, 1)]
    assert s.axes == ("ipc", "method", "lr_img", "seed")
    assert s.cells[0].config.params["lr_img"] == 0.5 and s.cells[2].config.iterations == 0  # random: fixed
    assert s.cells[2].config.params == {}  # lr_img: null does not apply to random


def test_seeds_count_or_list_and_defaults():
    assert [r.config.seed for r in expand_grid(grid(seeds=3)).cells] == [0, 1, 2]
    assert [r.config.seed for r in expand_grid(grid(seeds=[4, 9])).cells] == [4, 9]
    s = expand_grid({"base": TINY}, default_name="fromfile")
    assert s.name == "fromfile" and len(s.cells) == 1 and s.axes == ()
    assert s.exec == ExecConfig() and s.slurm == SlurmSpec()


def test_exec_and_slurm_blocks():
    s = expand_grid(grid(exec={"checkpoint_every": 5, "progress": False},
                         slurm={"partition": "cpu", "mem_gb": 4, "time_min": 20, "qos": None,
                                "additional": {"constraint": "a100"}}))
    assert s.exec.checkpoint_every == 5 and s.exec.progress is False
    assert s.slurm.partition == "cpu" and s.slurm.mem_gb == 4.0 and s.slurm.time_min == 20
    assert s.slurm.additional == {"constraint": "a100"} and s.slurm.max_timeouts == 3


def test_list_valued_fields_vary_as_lists():
    s = expand_grid(grid(grid={"eval_models": [["convnet3"], ["convnet3", "mlp"]]}))
    assert [r.eval.models for r in s.cells] == [("convnet3",), ("convnet3", "mlp")]
    assert point_values(s.cells[1], s.axes) == {"eval_models": "convnet3,mlp"}
    assert len(s.runs) == 1  # two evaluations of one distillation


def test_evals_cross_every_cell_and_share_the_distillation():
    s = expand_grid(grid(grid={"ipc": [1, 2]}, evals=[{"eval_epochs": 3}, {"eval_models": ["mlp"]}]))
    assert [(c.config.ipc, c.eval.epochs, c.eval.models) for c in s.cells] == [
        (1, 3, ("convnet3",)), (1, 2, ("mlp",)), (2, 3, ("convnet3",)), (2, 2, ("mlp",))]
    assert len(s.runs) == 2 and [len(r.evals) for r in s.runs] == [2, 2]
    assert s.axes == ("ipc", "eval_epochs", "eval_models")


def test_a_huge_grid_is_refused_before_expansion():
    big = grid(grid={"seed": list(range(1000)), "ipc": list(range(1, 1001))}, zip={"batch_real": list(range(1, 101))})
    with pytest.raises(ConfigError, match="100,000,000 points, more than the limit of 50,000"):
        expand_grid(big)


def test_load_grid_reads_yaml(tmp_path):
    path = tmp_path / "my-grid.yaml"
    path.write_text(yaml.safe_dump({"base": TINY, "grid": {"ipc": [1, 2]}}))
    s = load_grid(path)
    assert s.name == "my-grid" and len(s.cells) == 2 and s.source == str(path)


# ----------------------------------------------------------------------------------------------
# bad grids: one-line ConfigError


BAD = {
    "unknown top-level key": (grid(grdi={"ipc": [1]}), "unknown top-level key(s) in .*: grdi|unknown top-level key"),
    "unknown slurm key": (grid(slurm={"partiton": "cpu"}), "unknown slurm key"),
    "unknown config key in base": (grid(base={**TINY, "ipcs": 3}), "unknown config key.*base.*ipcs"),
    "unknown config key in grid": (grid(grid={"lr": [1.0]}), "unknown config key.*grid.*lr"),
    "not this method's parameter": (grid(base={**TINY, "method": "random"}, grid={"lr_img": [1.0]}),
                                    "lr_img is not a parameter of method random"),
    "unknown eval key": (grid(evals=[{"eval_epoch": 3}]), "unknown evaluation key"),
    "evals not a list": (grid(evals={"eval_epochs": 3}), "evals must be a non-empty list"),
    "unknown config key in zip": (grid(zip={"lr": [1.0]}), "unknown config key.*zip.*lr"),
    "unknown exec key": (grid(exec={"checkpoint": 5}), "unknown key.*exec.*checkpoint"),
    "empty list": (grid(grid={"ipc": [1], "seed": []}), "'seed' is an empty list"),
    "empty grid list": (grid(grid=[]), "grid is an empty list"),
    "empty zip list": (grid(zip={"ipc": []}), "'ipc' is an empty list"),
    "scalar grid value": (grid(grid={"ipc": 10}), "'ipc' must be a list of values"),
    "type error": (grid(grid={"ipc": [1, "ten"]}), "grid point 1 .*ipc.* must be int or null, got 'ten'"),
    "type error in exec": (grid(exec={"checkpoint_every": "often"}), "checkpoint_every.*must be int"),
    "slurm type error": (grid(slurm={"time_min": "1h"}), "slurm .*time_min.* must be int"),
    "slurm bad value": (grid(slurm={"array_parallelism": 0}), "array_parallelism must be >= 1"),
    "slurm additional not scalar": (grid(slurm={"additional": {"x": [1]}}), "additional must map"),
    "unknown method": (grid(grid={"method": ["dm", "nope"]}), "unknown method 'nope'"),
    "duplicate identity": (grid(grid={"ipc": [1, 2, 1]}), "grid points 0 .* and 2 .* resolve to the same run"),
    "nan slurm memory": (grid(slurm={"mem_gb": float("nan")}), "finite"),
    "duplicate after resolve": (grid(base={**TINY, "method": "random"}, grid={"iterations": [10, 20]}),
                                "resolve to the same run"),
    "zip unequal": (grid(zip={"method": ["dm", "random"], "lr_img": [1.0]}), "equal lengths.*method=2, lr_img=1"),
    "grid and zip overlap": (grid(grid={"ipc": [1]}, zip={"ipc": [2]}), "both grid and zip"),
    "seeds vs seed": (grid(base={**TINY, "seed": 1}, seeds=2), "'seeds' conflicts with the 'seed' key in base"),
    "bad seeds": (grid(seeds=0), "seeds must be >= 1"),
    "seeds duplicates": (grid(seeds=[1, 1]), "duplicates"),
    "not a mapping": (["ipc"], "must be a mapping"),
    "bad name": (grid(name="a/b"), "name must be"),
    "hidden name": (grid(name=".x"), "name must be"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grid_is_one_line_config_error(case):
    data, pattern = BAD[case]
    with pytest.raises(ConfigError, match=pattern) as e:
        expand_grid(data, source="g.yaml")
    assert "\n" not in str(e.value)


def test_unreadable_or_invalid_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read grid file"):
        load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {ipc: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grid(bad)


# ----------------------------------------------------------------------------------------------
# the grid files we ship


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_launch_grid_files_expand(path):
    sweep = load_grid(path)
    assert sweep.name == path.stem and len(sweep.runs) >= 1
    assert len(set(sweep.run_ids())) == len(sweep.runs)


def test_expected_launch_files_exist():
    names = {p.name for p in LAUNCH}
    assert {"quickstart.yaml", "table1.yaml", "cross_arch.yaml", "dream_curve.yaml",
            "ablation_local.yaml"} <= names


def test_launch_grids_match_their_purpose():
    quick = load_grid(REPO / "launch" / "quickstart.yaml")
    assert {r.config.dataset for r in quick.runs} <= {"digits", "fashionmnist"}
    assert {r.config.method for r in quick.runs} == {"dm", "random"}
    assert {r.config.ipc for r in quick.runs} == {1, 10} and {r.config.seed for r in quick.runs} == {0, 1}
    assert {c.eval.n for c in quick.cells} == {2}
    table1 = load_grid(REPO / "launch" / "table1.yaml")
    image_methods, generative = 4, 2  # a generator serves every ipc: one run per dataset
    assert len(table1.cells) == 6 * 3 * 3 and len(table1.runs) == (image_methods * 3 + generative) * 3
    assert len(table1.prereqs) == 3  # one cGAN pretraining per dataset, shared by dim and global_local
    assert {(c.eval.epochs, c.eval.n) for c in table1.cells} == {(1000, 5)}
    cross = load_grid(REPO / "launch" / "cross_arch.yaml")
    assert {c.eval.models for c in cross.cells} == {
        ("convnet3", "alexnet", "vgg11", "resnet10", "resnet18")}
    dream = load_grid(REPO / "launch" / "dream_curve.yaml")
    assert sorted({r.config.iterations for r in dream.runs}) == list(range(100, 1001, 100))
    assert {r.config.sampler for r in dream.runs} == {"random", "dream"}
    fmnist = load_grid(REPO / "launch" / "dream_fmnist.yaml")
    assert {(r.config.method, r.config.sampler) for r in fmnist.runs} == {
        ("dm", "random"), ("dm", "dream"), ("dc", "random"), ("dc", "dream"), ("dsa", "random"),
        ("dsa", "dream"), ("random", "random")}
    gen = load_grid(REPO / "launch" / "generative_fmnist.yaml")
    assert len(gen.prereqs) == 1 and {c.eval.ipc for c in gen.cells if c.config.method == "dim"} == {1, 10, 50}
    ablation = load_grid(REPO / "launch" / "ablation_local.yaml")
    assert ablation.prereqs == gen.prereqs  # the same pretraining
    assert [r.config.params["lambda_local"] for r in ablation.runs] == [0.0, 0.0001, 0.001, 0.01]


# ----------------------------------------------------------------------------------------------
# small pure helpers of the launch/status path


def test_array_sizes_split_at_max_array_size():
    assert array_sizes(0, 5) == ()
    assert array_sizes(5, 5) == (5,)
    assert array_sizes(8, 5) == (5, 3)
    assert array_sizes(2500, 1001) == (1001, 1001, 498)


def test_scheduler_output_parsing_expands_array_ranges():
    assert expand_task_ids("12_[3-5,8%2]") == ["12_3", "12_4", "12_5", "12_8"]
    assert expand_task_ids("12_7") == ["12_7"]
    assert _parse_lines("12_[0-1]|PENDING\n12_2|RUNNING\n13|CANCELLED by 0\n\n") == {
        "12_0": "PENDING", "12_1": "PENDING", "12_2": "RUNNING", "13": "CANCELLED"}


def test_pickled_job_is_small_and_holds_no_tensors(tmp_path):
    s = expand_grid(grid(seeds=2, exec={"checkpoint_every": 5}))
    task = build_tasks(s, tmp_path)[0]
    job = make_job(task, s, {"checkpoint_every": 5})
    blob = pickle.dumps(job)
    assert len(blob) < 4096 and b"torch" not in blob
    assert set(vars(job)) == {"stage", "payload", "task_dir", "exec_cfg"}
    assert job.task_dir == str(tmp_path / s.cells[0].run_id) and job.exec_cfg["checkpoint_every"] == 5
    fresh = job.checkpoint().function
    assert fresh is not job and vars(fresh) == vars(job)


def test_jobs_get_threads_from_the_cluster_unless_the_grid_sets_them(tmp_path):
    from hpcdd.sweep.launch import job_threads, local_parallelism

    s = expand_grid(grid(slurm={"cpus_per_task": 6, "array_parallelism": 64}))
    assert job_threads("slurm", s) == 6
    assert job_threads("local", s) == max(1, (os.cpu_count() or 1) // local_parallelism(s))
    assert job_threads("debug", s) is None
    pinned = expand_grid(grid(exec={"threads": 3}))
    assert job_threads("slurm", pinned) == job_threads("local", pinned) == 3


def test_tables_show_axes_states_and_errors():
    s = expand_grid(grid(grid={"ipc": [1, 2]}))
    a, b = s.run_ids()
    states = {f"run:{a}": TaskState(f"run:{a}", "done", "7_0", last_log="2026-01-01T00:00:00Z done: dc2 acc 0.5"),
              f"run:{b}": TaskState(f"run:{b}", "failed", "7_1", "TIMEOUT without 'done'", "iteration 3/6",
                                    "ValueError: boom")}
    text = status_table(s, states)
    assert "done: dc2 acc 0.5" in text and "2026-01-01" not in text
    assert "failed (TIMEOUT" in text and "ValueError: boom" in text and "7_1" in text and "iteration 3/6" in text
    assert state_counts(states) == "1 done, 1 failed"
    plan = plan_table(s, states, {f"run:{a}": "skip (done)", f"run:{b}": "submit"})
    assert plan.splitlines()[0].split() == ["task", "id", "ipc", "state", "action"]


@pytest.mark.parametrize("slurm", [{"partition": "gpu\n#SBATCH --x"}, {"qos": "a b"},
                                   {"additional": {"constraint": "a100\nrm -rf /"}}, {"account": ""}])
def test_slurm_strings_cannot_inject_sbatch_lines(slurm):
    with pytest.raises(ConfigError, match="one word"):
        expand_grid(grid(slurm=slurm))
