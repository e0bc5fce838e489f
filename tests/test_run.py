"""run_one: atomic checkpoints, bit-identical resume, run-dir safety, result.json."""

import json

import pytest
import torch

from hpcdd.config import resolve, run_id
from hpcdd.errors import CheckpointError, NonFiniteLossError, RunDirError
from hpcdd.run import Interrupted, evaluate_run, run_one
from hpcdd.runtime.checkpoint import checkpoint_files

from helpers import QUIET, synset, tiny


def stop_after(n):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


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


def test_resume_after_crash_falls_back_past_corrupt_checkpoint(tmp_path, reference):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(5))
    newest = checkpoint_files(tmp_path / "checkpoint")[0][1]
    newest.write_bytes(newest.read_bytes()[:100])  # a torn file
    with pytest.warns(UserWarning, match="skipping unreadable"):
        run_one(tiny(), tmp_path, QUIET, evaluate=False)
    assert "resumed at iteration 4" in (tmp_path / "log.txt").read_text()
    assert torch.equal(synset(tmp_path)["images"], reference["images"])


def test_all_checkpoints_corrupt_is_a_clear_error(tmp_path):
    with pytest.raises(Interrupted):
        run_one(tiny(), tmp_path, QUIET, evaluate=False, should_stop=stop_after(1))
    for _, p in checkpoint_files(tmp_path / "checkpoint"):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        run_one(tiny(), tmp_path, QUIET, evaluate=False)


def test_result_json_schema_and_done_last(tmp_path):
    row = run_one(tiny(method="random"), tmp_path, QUIET)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == row
    assert (tmp_path / "done").read_text().strip() == row["run_id"] == run_id(resolve(tiny(method="random")))
    for key in ("acc_mean", "acc_std", "accs", "acc_mean__convnet3", "protocol", "method", "ipc",
                "seed", "git_commit", "distill_seconds", "eval_seconds", "peak_rss_mb"):
        assert key in row
    assert row["protocol"] == "dc2" and 0.0 <= row["acc_mean"] <= 1.0
    # idempotent: a done run returns its row without recomputing
    assert run_one(tiny(method="random"), tmp_path, QUIET) == row
    # evaluate again from synset.pt gives the same accuracy (deterministic eval)
    again = evaluate_run(tmp_path, QUIET)
    assert again["accs"] == row["accs"]


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
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        run_one(tiny(lr_img=1e30, iterations=40), tmp_path, QUIET, evaluate=False)
    assert not (tmp_path / "synset.pt").exists()
    for _, p in checkpoint_files(tmp_path / "checkpoint"):
        state = torch.load(p, weights_only=True)
        assert torch.isfinite(state["distiller"]["images"]).all()


def test_overwrite_replaces_an_hpcdd_run_but_never_foreign_files(tmp_path):
    run_one(tiny(method="random"), tmp_path / "r", QUIET, evaluate=False)
    run_one(tiny(method="random", seed=2), tmp_path / "r", QUIET, evaluate=False, overwrite=True)
    assert run_id(resolve(tiny(method="random", seed=2))) in (tmp_path / "r" / "synset.pt").read_bytes().decode("latin1")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="not an hpcdd run dir"):
        run_one(tiny(method="random"), tmp_path / "mine", QUIET, evaluate=False, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_a_run_dir_is_locked_while_in_use(tmp_path):
    from hpcdd.run import run_dir_lock

    run_one(tiny(method="random"), tmp_path, QUIET, evaluate=False)
    with run_dir_lock(tmp_path):
        with pytest.raises(RunDirError, match="in use"):
            run_one(tiny(method="random"), tmp_path, QUIET, evaluate=False)


def test_invalid_config_leaves_no_config_behind(tmp_path):
    from hpcdd.errors import ConfigError

    with pytest.raises(ConfigError):
        run_one(tiny(net="convnet4", im_size=8), tmp_path / "r", QUIET, evaluate=False)
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_ipc_larger_than_a_class_is_refused(tmp_path):
    from hpcdd.errors import ConfigError

    with pytest.raises(ConfigError, match="exceeds the smallest class"):
        run_one(tiny(method="kcenter", ipc=500), tmp_path / "r", QUIET, evaluate=False)
    assert not (tmp_path / "r" / "config.yaml").exists()
