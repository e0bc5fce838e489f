"""run_one: atomic checkpoints, bit-identical resume, run-dir safety, evaluations as their own
stage (result rows, per-model resume)."""

import json

import pytest
import torch

from hpcdd.catalog import eval_id, resolve, run_id
from hpcdd.config import EvalConfig
from hpcdd.errors import CheckpointError, NonFiniteLossError, RunDirError
from hpcdd.run import evaluate_run, run_one
from hpcdd.runtime.checkpoint import checkpoint_files
from hpcdd.runtime.preempt import Interrupted

from helpers import QUIET, TINY_EVAL, result, stop_after, synset, tiny


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (DM with DSA, 6 iterations)."""
    d = tmp_path_factory.mktemp("ref")
    run_one(tiny(), d, QUIET, evaluate=False)
    return synset(d)


def test_resume_after_stop_is_bit_identical(tmp_path, reference):
    with pytest.raises(Interrupted) as e:
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(3))
    assert e.value.it == 3
    assert [it for it, _ in checkpoint_files(tmp_path / "checkpoint")] == [3, 2]
    run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert "resumed at iteration 3" in (tmp_path / "log.txt").read_text()
    assert torch.equal(synset(tmp_path)["images"], reference["images"])
    its = [r["it"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert its == list(range(6))  # no duplicated rows after resume


def test_resume_after_crash_falls_back_past_corrupt_checkpoint(tmp_path, reference, capsys):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(5))
    newest = checkpoint_files(tmp_path / "checkpoint")[0][1]
    newest.write_bytes(newest.read_bytes()[:100])  # a torn file
    run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert "hpcdd: warning: skipping unreadable" in capsys.readouterr().err
    assert "resumed at iteration 4" in (tmp_path / "log.txt").read_text()
    assert torch.equal(synset(tmp_path)["images"], reference["images"])


def test_all_checkpoints_corrupt_is_a_clear_error(tmp_path):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(1))
    for _, p in checkpoint_files(tmp_path / "checkpoint"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        run_one(tiny(), tmp_path, QUIET, evaluate=False)


def test_result_json_schema_and_done_last(tmp_path):
    [row] = run_one(tiny(method="random"), tmp_path, QUIET, evals=[TINY_EVAL])
    eid = eval_id(TINY_EVAL)
    assert result(tmp_path) == row and row["eval_id"] == eid
    assert json.loads((tmp_path / "done").read_text())["run_id"] == row["run_id"] == run_id(resolve(tiny(method="random")))
    assert (tmp_path / "eval" / eid / "done").read_text().strip() == eid
    for key in ("acc_mean", "acc_std", "accs", "acc_mean__convnet3", "protocol", "method", "ipc",
                "seed", "git_commit", "distill_seconds", "eval_seconds", "wall_seconds", "peak_rss_mb",
                "eval_epochs", "eval_models", "run_id", "eval_id"):
        assert key in row
    assert row["protocol"] == "dc2" and 0.0 <= row["acc_mean"] <= 1.0
    # idempotent: a done run returns its row without recomputing
    assert run_one(tiny(method="random"), tmp_path, QUIET, evals=[TINY_EVAL]) == [row]
    assert "distill_seconds" not in synset(tmp_path)  # the artefact holds no timing: bit-identical files


def test_adding_an_evaluation_does_not_redistill(tmp_path):
    run_one(tiny(), tmp_path, QUIET, evals=[TINY_EVAL])
    before = (tmp_path / "synset.pt").read_bytes()
    log_lines = len((tmp_path / "log.txt").read_text().splitlines())
    second = EvalConfig(models=("convnet3", "mlp"), epochs=3, n=2)
    row = evaluate_run(tmp_path, second, QUIET)
    assert row["eval_id"] == eval_id(second) != eval_id(TINY_EVAL)
    assert row["protocol"] == "dc3" and len(row["accs__mlp"]) == 2
    assert (tmp_path / "synset.pt").read_bytes() == before
    new_log = (tmp_path / "log.txt").read_text().splitlines()[log_lines:]
    assert new_log and not any("iteration" in line or "start run" in line for line in new_log)
    # evaluating the same config again is a no-op returning the same row
    assert evaluate_run(tmp_path, second, QUIET) == row
    from hpcdd.report.aggregate import aggregate

    df, report = aggregate([tmp_path])
    assert len(df) == 2 and set(df["eval_id"]) == {eval_id(TINY_EVAL), eval_id(second)}
    assert set(df["run_id"]) == {row["run_id"]} and set(df["protocol"]) == {"dc2", "dc3"}
    assert report.incomplete == ()


def test_an_interrupted_evaluation_resumes_at_the_next_model(tmp_path):
    run_one(tiny(method="random"), tmp_path, QUIET, evaluate=False)
    ev = EvalConfig(epochs=3, n=3)
    epochs_seen = {"n": 0}

    def stop_after_first_model():  # asked once per epoch: stop at the first epoch of model 2
        epochs_seen["n"] += 1
        return epochs_seen["n"] > ev.epochs

    with pytest.raises(Interrupted):
        evaluate_run(tmp_path, ev, QUIET, should_stop=stop_after_first_model)
    models = tmp_path / "eval" / eval_id(ev) / "models"
    assert sorted(p.name for p in models.iterdir()) == ["convnet3-0.json"]
    first = json.loads((models / "convnet3-0.json").read_text())["acc"]
    row = evaluate_run(tmp_path, ev, QUIET)
    assert "resuming with 1 model(s) already done" in (tmp_path / "log.txt").read_text()
    assert row["accs"][0] == first and len(row["accs"]) == 3
    fresh = tmp_path / "fresh"
    run_one(tiny(method="random"), fresh, QUIET, evaluate=False)
    assert evaluate_run(fresh, ev, QUIET)["accs"] == row["accs"]  # same numbers as uninterrupted


def test_evaluate_refuses_a_run_that_is_not_distilled(tmp_path):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(1))
    with pytest.raises(RunDirError, match="has not finished distilling"):
        evaluate_run(tmp_path, TINY_EVAL, QUIET)


def test_refuses_a_different_run_in_the_same_dir(tmp_path):
    run_one(tiny(method="random"), tmp_path, QUIET, evaluate=False)
    with pytest.raises(RunDirError, match="different run"):
        run_one(tiny(method="random", seed=1), tmp_path, QUIET, evaluate=False)


def test_refuses_a_foreign_non_empty_dir(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not empty"):
        run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunDirError, match="cannot write"):
        run_one(tiny(), blocker / "run", QUIET, evaluate=False)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    import dataclasses

    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):
        run_one(tiny(lr_img=1e30, iterations=40), tmp_path / "a", QUIET, evaluate=False)
    every = dataclasses.replace(QUIET, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match=r"the last good checkpoint \(iteration 1\) is kept"):
        run_one(tiny(lr_img=1e30, iterations=40), tmp_path / "b", every, evaluate=False)
    assert not (tmp_path / "b" / "synset.pt").exists()
    for _, p in checkpoint_files(tmp_path / "b" / "checkpoint"):
        state = torch.load(p, weights_only=True)
        assert torch.isfinite(state["job"]["distiller"]["images"]).all()


def test_overwrite_replaces_an_hpcdd_run_but_never_foreign_files(tmp_path):
    run_one(tiny(method="random"), tmp_path / "r", QUIET, evaluate=False)
    run_one(tiny(method="random", seed=2), tmp_path / "r", QUIET, evaluate=False, overwrite=True)
    assert synset(tmp_path / "r")["run_id"] == run_id(resolve(tiny(method="random", seed=2)))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="not an hpcdd run dir"):
        run_one(tiny(method="random"), tmp_path / "mine", QUIET, evaluate=False, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    # a config.yaml that looks like a run's does not make a directory hpcdd's
    (tmp_path / "mine" / "config.yaml").write_text("seed: 3\nmethod: random\n")
    with pytest.raises(RunDirError, match="not an hpcdd run dir"):
        run_one(tiny(method="random"), tmp_path / "mine", QUIET, evaluate=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.yaml", "thesis.tex"]


def test_overwrite_deletes_only_hpcdd_files_of_a_run_dir(tmp_path):
    run_one(tiny(method="random"), tmp_path, QUIET, evals=[TINY_EVAL])
    (tmp_path / "notes.md").write_text("mine")
    run_one(tiny(method="random", seed=2), tmp_path, QUIET, evaluate=False, overwrite=True)
    assert (tmp_path / "notes.md").read_text() == "mine" and not (tmp_path / "eval").exists()


def test_a_run_dir_is_locked_while_in_use(tmp_path):
    from hpcdd.rundir import lock

    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(1))
    with lock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            run_one(tiny(), tmp_path, QUIET, evaluate=False)


def test_invalid_config_leaves_no_config_behind(tmp_path):
    from hpcdd.errors import ConfigError

    with pytest.raises(ConfigError):
        run_one(tiny(net="convnet4", im_size=8), tmp_path / "r", QUIET, evaluate=False)
    assert not (tmp_path / "r").exists()


def test_ipc_larger_than_a_class_is_refused(tmp_path):
    from hpcdd.errors import ConfigError

    with pytest.raises(ConfigError, match="exceeds the smallest class"):
        run_one(tiny(method="kcenter", ipc=500), tmp_path / "r", QUIET, evaluate=False)
    assert not (tmp_path / "r").exists()  # nothing left behind, not even an empty dir


def test_stale_temp_files_are_cleaned_at_start(tmp_path):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(3))
    stale = [tmp_path / ".synset.pt.abcd1234.tmp", tmp_path / "checkpoint" / ".ckpt-00000004.pt.x1y2z3w4.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("mine")
    run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert not any(p.exists() for p in stale) and (tmp_path / "notes.tmp").read_text() == "mine"


def test_a_checkpoint_that_cannot_be_restored_falls_back_to_the_previous(tmp_path, reference, capsys):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(5))
    newest = checkpoint_files(tmp_path / "checkpoint")[0][1]
    state = torch.load(newest, weights_only=True)
    state["job"]["distiller"]["images"] = state["job"]["distiller"]["images"][:, :, :5]  # wrong shape
    torch.save(state, newest)
    run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert "that cannot be restored" in capsys.readouterr().err
    assert "resumed at iteration 4" in (tmp_path / "log.txt").read_text()
    assert torch.equal(synset(tmp_path)["images"], reference["images"])


def test_a_malformed_metrics_row_does_not_block_resume(tmp_path, reference):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(3))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"it": "three", "loss": 1}\n{"it": [1]}\nnot json at all\n')
    run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert torch.equal(synset(tmp_path)["images"], reference["images"])
    its = [r["it"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert its == list(range(6))


def test_quick_eval_points_are_evenly_spaced_whatever_the_budget(tmp_path):
    import dataclasses

    from hpcdd.run import quick_eval_points

    assert quick_eval_points(10, 0, 5) == {0, 2, 4, 6, 8, 10}
    assert quick_eval_points(200, 0, 10) == set(range(0, 201, 20))
    assert quick_eval_points(6, 3, 0) == {0, 3, 6} and quick_eval_points(6, 0, 0) == set()
    run_one(tiny(), tmp_path, dataclasses.replace(QUIET, eval_points=3), evaluate=False)
    evals = [r["it"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "eval_acc" in r]
    assert evals == [0, 2, 4, 6]


def test_quick_evals_at_given_iterations_with_several_models(tmp_path, capsys):
    import dataclasses

    from hpcdd.cli import _configs, build_parser, main
    from hpcdd.run import quick_eval_points

    assert quick_eval_points(500, 0, 0, (10, 20, 45, 500, 900)) == {0, 10, 20, 45, 500}  # 900: beyond
    assert quick_eval_points(10, 0, 2, (3,)) == {0, 3, 5, 10}
    cfg = tiny(net="mlp", iterations=2)
    run_one(cfg, tmp_path / "a", dataclasses.replace(QUIET, eval_at=(1,), eval_point_n=2), evaluate=False)
    rows = [r for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) if "eval_acc" in r]
    assert [r["it"] for r in rows] == [0, 1]
    for r in rows:
        assert len(r["eval_accs"]) == 2 and r["eval_acc"] == pytest.approx(sum(r["eval_accs"]) / 2)
        assert r["eval_seconds"] > 0 and r["eval_model"] == "mlp"
    run_one(cfg, tmp_path / "b", dataclasses.replace(QUIET, eval_at=(1,)), evaluate=False)
    one = [r for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) if "eval_acc" in r]
    assert [r["eval_accs"] for r in one] == [r["eval_accs"][:1] for r in rows]  # model 0 is the one-model eval
    args = build_parser().parse_args(["distill", "--eval-at", "1,4", "--eval-point-n", "2", "--out", "x"])
    assert _configs(args, {}, "command line")[2].eval_at == (1, 4)
    for bad, words in ((["--eval-point-n", "0"], "eval_point_n must be >= 1"), (["--eval-at", "x"], "--eval-at")):
        try:
            code = main(["distill", "--dataset", "digits", "--no-eval", *bad, "--out", str(tmp_path / "d")])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_evaluations_of_one_run_run_at_once_each_holding_its_own_dir(tmp_path):
    """A sweep's evaluation tasks of one run (several ipcs of one generator, a cross-architecture
    cell beside the ConvNet3 one) start side by side: each takes the run dir shared and its own
    eval dir exclusively; a distillation holding the run dir, or a second process on the same
    evaluation, is refused in one line."""
    import fcntl

    from hpcdd.rundir import eval_dir, lock

    run_one(tiny(method="random"), tmp_path, QUIET, evaluate=False)
    first, second = EvalConfig(epochs=2, n=1), EvalConfig(epochs=3, n=1)
    with open(tmp_path / ".lock", "a+") as held:  # another evaluation of this run is under way
        fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
        row = evaluate_run(tmp_path, second, QUIET)
    assert row["eval_id"] == eval_id(second) and (eval_dir(tmp_path, eval_id(second)) / "done").exists()
    with lock(tmp_path):  # a distillation (or --overwrite) holds the run dir
        with pytest.raises(RunDirError, match="in use"):
            evaluate_run(tmp_path, first, QUIET)
    eval_dir(tmp_path, eval_id(first)).mkdir(parents=True)
    with lock(eval_dir(tmp_path, eval_id(first))):  # this very evaluation is under way elsewhere
        with pytest.raises(RunDirError, match=f"eval/{eval_id(first)} is in use"):
            evaluate_run(tmp_path, first, QUIET)
    assert evaluate_run(tmp_path, first, QUIET)["eval_id"] == eval_id(first)
