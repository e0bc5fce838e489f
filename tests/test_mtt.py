"""MTT (issue 20): the paper's settings, experts as a shared prerequisite that saves every epoch
atomically and resumes at its last finished epoch, the unrolled functional student, bit-identical
resume, bad values (one line, exit 2, nothing written) and sweeps with one task per expert.

Tiny budgets: digits, the MLP, experts of a few epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpcdd import prereq
from hpcdd.catalog import configs_from_flat, prereq_id, prerequisites, resolve, run_id
from hpcdd.cli import main
from hpcdd.config import ExecConfig
from hpcdd.distill.mtt_experts import EPOCHS_DIR, epoch_files, epoch_path
from hpcdd.errors import ConfigError
from hpcdd.run import run_one
from hpcdd.runtime.preempt import Interrupted
from hpcdd.specs.mtt import PAPER, settings

from helpers import stop_after, synset

BASE = dict(method="mtt", dataset="digits", net="mlp", ipc=2, iterations=3, buffer_experts=2, buffer_epochs=4,
            max_start_epoch=2, expert_epochs=2, syn_steps=3, buffer_batch=128)


def cfg_of(**kw):
    run, ev = configs_from_flat({**BASE, **kw}, where="test")
    return resolve(run), ev


def exe(root: Path, **kw) -> ExecConfig:
    return ExecConfig(progress=False, artefact_root=str(root), **kw)


@pytest.fixture(scope="module")
def buffer_root(tmp_path_factory) -> Path:
    """A built buffer of BASE's 2 experts (shared by the tests that read it)."""
    root = tmp_path_factory.mktemp("artefacts")
    cfg, _ = cfg_of()
    for ref in prerequisites(cfg):
        prereq.build(ref, exe(root), report=lambda m: None)
    return root


# ----------------------------------------------------------------------------------------------
# settings and identity


def test_null_settings_take_the_papers_row_for_the_dataset_and_ipc():
    c10 = settings(resolve(configs_from_flat({"method": "mtt", "dataset": "cifar10", "ipc": 10}, "t")[0]))
    assert (c10.syn_steps, c10.expert_epochs, c10.max_start_epoch, c10.lr_img, c10.lr_lr, c10.lr_teacher) == \
        (30, 2, 20, 100.0, 1e-5, 0.001) and c10.batch_syn is None
    c100 = settings(resolve(configs_from_flat({"method": "mtt", "dataset": "cifar100", "ipc": 50}, "t")[0]))
    assert c100.batch_syn == 125 and c100.syn_steps == 80 and c100.source == "cifar100 ipc 50"
    fm = settings(resolve(configs_from_flat({"method": "mtt", "dataset": "fashionmnist", "ipc": 1}, "t")[0]))
    assert fm.source == "cifar10 ipc 1" and fm.syn_steps == PAPER["cifar10"][1].syn_steps  # CIFAR-10's
    five = settings(resolve(configs_from_flat({"method": "mtt", "dataset": "fashionmnist", "ipc": 5}, "t")[0]))
    assert five.source == "cifar10 ipc 1"  # the largest listed ipc below
    given = settings(resolve(configs_from_flat({"method": "mtt", "ipc": 10, "syn_steps": 7}, "t")[0]))
    assert given.syn_steps == 7 and given.max_start_epoch == 20


def test_experts_are_one_prerequisite_each_shared_across_seeds_ipc_and_buffer_size():
    cfg, _ = cfg_of()
    refs = prerequisites(cfg)
    assert [r.kind for r in refs] == ["mtt_expert"] * 2 and [r.config.index for r in refs] == [0, 1]
    assert [r.role for r in refs] == ["expert0", "expert1"] and refs[0].config.epochs == 4
    ids = [prereq_id(r) for r in refs]
    assert len(set(ids)) == 2
    other, _ = cfg_of(seed=3, ipc=1, syn_steps=5, lr_img=10.0, buffer_experts=3)
    assert [prereq_id(r) for r in prerequisites(other)][:2] == ids  # same buffer config: the same experts
    for change in ({"buffer_lr": 0.02}, {"buffer_epochs": 5}, {"net": "convnet3"}, {"dsa": False},
                   {"buffer_seed": 1}, {"sampler": "dream"}):
        assert prereq_id(prerequisites(cfg_of(**change)[0])[0]) != ids[0], change
    default, _ = cfg_of(buffer_epochs=None, max_start_epoch=3, expert_epochs=2)
    assert prerequisites(default)[0].config.epochs == 4  # null: the last epoch the run reads (3 - 1 + 2)


# ----------------------------------------------------------------------------------------------
# experts


def _expert_params(d: Path) -> list[dict]:
    return [torch.load(epoch_path(d, e), weights_only=True)["params"] for e in epoch_files(d)]


def test_an_interrupted_expert_resumes_at_its_last_epoch_without_missing_or_duplicate_files(tmp_path, buffer_root):
    cfg, _ = cfg_of()
    ref = prerequisites(cfg)[0]
    with pytest.raises(Interrupted):
        prereq.build(ref, exe(tmp_path), should_stop=stop_after(2), report=lambda m: None)
    d = prereq.ref_dir(ref, exe(tmp_path))
    assert epoch_files(d) == [0, 1, 2] and not (d / "done").exists()
    prereq.build(ref, exe(tmp_path), report=lambda m: None)
    assert "resumed at iteration 2" in (d / "log.txt").read_text()
    assert epoch_files(d) == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in (d / EPOCHS_DIR).iterdir()) == [f"epoch-{e:04d}.pt" for e in range(5)]
    reference = prereq.ref_dir(ref, exe(buffer_root))  # built without interruption
    for a, b in zip(_expert_params(d), _expert_params(reference), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((d / "expert.json").read_text())
    assert meta["epochs"] == 4 and meta["dataset"] == "digits" and 0 <= meta["test_acc"] <= 1


def test_an_expert_that_crashes_mid_epoch_redoes_only_that_epoch(tmp_path, buffer_root, monkeypatch):
    """A crash (no handler: kill -9, node failure) inside epoch 3: the per-epoch checkpoint
    resumes it at epoch 2; the files end up complete and equal to an uninterrupted expert's."""
    from hpcdd.distill import mtt_experts

    cfg, _ = cfg_of()
    ref = prerequisites(cfg)[1]
    original = mtt_experts.MttExpert.step

    def crash(self, it):
        if it == 2:
            raise RuntimeError("killed")
        return original(self, it)

    monkeypatch.setattr(mtt_experts.MttExpert, "step", crash)
    with pytest.raises(RuntimeError):
        prereq.build(ref, exe(tmp_path), report=lambda m: None)
    monkeypatch.setattr(mtt_experts.MttExpert, "step", original)
    d = prereq.build(ref, exe(tmp_path), report=lambda m: None)
    assert "resumed at iteration 2" in (d / "log.txt").read_text()
    assert epoch_files(d) == [0, 1, 2, 3, 4]
    reference = prereq.ref_dir(ref, exe(buffer_root))
    for a, b in zip(_expert_params(d), _expert_params(reference), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_experts_with_the_dream_sampler_train_on_class_balanced_representative_batches(tmp_path, monkeypatch):
    from hpcdd.select.dream import DreamSampler

    asked = []
    original = DreamSampler.batch_indices

    def spy(self, classes, n, net=None):
        asked.append((list(classes), n, net is not None))
        return original(self, classes, n, net)

    monkeypatch.setattr(DreamSampler, "batch_indices", spy)
    cfg, _ = cfg_of(sampler="dream", buffer_experts=1, buffer_epochs=3, interval=4, kmeans_iters=2)
    [ref] = prerequisites(cfg)
    assert ref.config.sampler == "dream" and ref.config.sampler_params["interval"] == 4
    d = prereq.build(ref, exe(tmp_path), report=lambda m: None)
    assert epoch_files(d) == [0, 1, 2, 3]
    assert asked and all(a == (list(range(10)), 12, True) for a in asked)  # 128 // 10 per class
    meta = json.loads((d / "expert.json").read_text())
    assert meta["sampler"]["name"] == "dream" and meta["sampler"]["reclusterings"] == 10 * 9  # every 4th of 36 calls
    assert len(asked) == 3 * 12  # as many steps as a shuffled epoch of 1437 images in batches of 128


# ----------------------------------------------------------------------------------------------
# the distillation


def _distiller(buffer_root: Path, **kw):
    from hpcdd.data import load_dataset
    from hpcdd.distill.mtt import MTT
    from hpcdd.runtime.accel import make_accelerator

    cfg, _ = cfg_of(**kw)
    data = load_dataset(cfg.dataset)
    artefacts = {r.role: prereq.ref_dir(r, exe(buffer_root)) for r in prerequisites(cfg)}
    return MTT(cfg, data.train, make_accelerator(), None, artefacts)


def test_one_functional_student_step_is_plain_sgd(buffer_root):
    d = _distiller(buffer_root, syn_steps=1)
    d.dsa = None
    theta = d._flat(d.buffer.params(0, 1))
    gen = torch.Generator().manual_seed(0)
    [idx] = d._minibatches(torch.Generator().manual_seed(0))
    [p.requires_grad_(True) for p in theta]
    after = d.unroll([p.clone().requires_grad_(True) for p in theta], gen)
    net = d.net
    with torch.no_grad():
        for (_, p), t in zip(net.named_parameters(), theta):
            p.copy_(t)
    loss = torch.nn.functional.cross_entropy(net(d.images[idx].detach()), d.labels[idx])
    grads = torch.autograd.grad(loss, list(net.parameters()))
    for a, t, g in zip(after, theta, grads):
        torch.testing.assert_close(a.detach(), t.detach() - d.s.lr_teacher * g, rtol=1e-5, atol=1e-7)


def test_loss_is_the_normalised_distance_and_reaches_pixels_and_lr(buffer_root):
    d = _distiller(buffer_root)
    theta0, target = d._flat(d.buffer.params(0, 0)), d._flat(d.buffer.params(0, 2))
    with torch.no_grad():
        d.syn_lr.zero_()  # a student that does not move: loss 1 exactly
    assert d.match(theta0, target, torch.Generator().manual_seed(0)).item() == pytest.approx(1.0)
    with torch.no_grad():
        d.syn_lr.fill_(0.01)
    loss = d.match(theta0, target, torch.Generator().manual_seed(0))
    loss.backward()
    assert d.images.grad is not None and d.images.grad.abs().sum() > 0
    assert d.syn_lr.grad is not None and d.syn_lr.grad != 0


def test_resume_is_bit_identical_and_lr_is_learned(tmp_path, buffer_root):
    cfg, _ = cfg_of(iterations=4, lr_lr=1e-4)
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    run_one(cfg, ref, exe(buffer_root, checkpoint_every=2), evaluate=False)
    with pytest.raises(Interrupted) as e:
        run_one(cfg, out, exe(buffer_root, checkpoint_every=2), evaluate=False, should_stop=stop_after(2))
    assert e.value.it == 2
    run_one(cfg, out, exe(buffer_root, checkpoint_every=2), evaluate=False)
    assert "resumed at iteration 2" in (out / "log.txt").read_text()
    assert torch.equal(synset(out)["images"], synset(ref)["images"])
    rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["syn_lr"] for r in rows if "syn_lr" in r]
    assert len(lrs) == 4 and lrs[-1] != lrs[0]  # the student lr moves
    used = json.loads((ref / "prerequisites.json").read_text())
    assert sorted(used) == ["expert0", "expert1"]


# ----------------------------------------------------------------------------------------------
# bad values: one line, exit 2, nothing written


TINY_FLAGS = ["--method", "mtt", "--dataset", "digits", "--net", "mlp", "--ipc", "2", "--iterations", "2",
              "--buffer-experts", "2", "--buffer-epochs", "4", "--max-start-epoch", "2", "--expert-epochs", "2",
              "--syn-steps", "3", "--buffer-batch", "128", "--eval-epochs", "1", "--eval-n", "1", "--no-progress"]


def _refused(capsys, tmp_path: Path, *flags: str) -> str:
    before = sorted(tmp_path.rglob("*"))
    code = main(["distill", *TINY_FLAGS, *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before  # no run dir, no expert built
    return err


@pytest.mark.parametrize("flags, words", [
    (["--syn-steps", "0"], "syn_steps must be >= 1"),
    (["--max-start-epoch", "4"], "reads expert epochs up to 5, beyond the 4 the buffer keeps"),
    (["--batch-syn", "21"], "batch_syn 21 is larger than the synthetic set (20 images"),
    (["--memory-limit-gb", "0.01"], "estimated peak memory"),
    (["--buffer-dir", "/tmp"], "buffer_dir reads an existing buffer; buffer_experts, buffer_epochs, buffer_batch"),
])
def test_bad_values_are_refused_before_anything_is_built(capsys, tmp_path, monkeypatch, flags, words):
    monkeypatch.setenv("HPCDD_ARTEFACTS", str(tmp_path / "artefacts"))
    assert words in _refused(capsys, tmp_path, *flags)


@pytest.mark.parametrize("flags, words", [
    (["--net", "convnet3"], "trained on digits with net mlp; this run is digits with net convnet3"),
    (["--max-start-epoch", "4"], "beyond the 4 the buffer in"),
    (["--buffer-epochs", "5"], "buffer_dir reads an existing buffer; buffer_epochs describe one to build"),
    (["--buffer-dir", "/nonexistent/buffer"], "buffer_dir /nonexistent/buffer is not a directory"),
])
def test_a_buffer_dir_of_another_net_or_too_short_is_refused(capsys, tmp_path, monkeypatch, buffer_root, flags,
                                                              words):
    monkeypatch.setenv("HPCDD_ARTEFACTS", str(tmp_path / "artefacts"))
    argv = list(TINY_FLAGS)
    for key in ("--buffer-experts", "--buffer-epochs", "--buffer-batch"):  # these describe a buffer to build
        i = argv.index(key)
        del argv[i:i + 2]
    before = sorted(tmp_path.rglob("*"))
    code = main(["distill", *argv, "--buffer-dir", str(buffer_root / "mtt_expert"), *flags,
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert words in err, err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_buffer_of_another_dataset_is_refused(tmp_path, buffer_root):
    run, _ = configs_from_flat({**{k: v for k, v in BASE.items() if not k.startswith("buffer_")},
                                "dataset": "mnist5k", "buffer_dir": str(buffer_root / "mtt_expert")}, "t")
    with pytest.raises(ConfigError, match="trained on digits with net mlp; this run is mnist5k"):
        run_one(run, tmp_path / "run", exe(tmp_path / "a"), evaluate=False)
    assert not (tmp_path / "run").exists()


def test_a_run_reads_an_existing_buffer_dir_without_building(tmp_path, buffer_root):
    run, _ = configs_from_flat({**{k: v for k, v in BASE.items() if not k.startswith("buffer_")},
                                "buffer_dir": str(buffer_root / "mtt_expert")}, "t")
    assert prerequisites(resolve(run)) == []
    run_one(run, tmp_path / "run", exe(tmp_path / "empty"), evaluate=False)
    assert not (tmp_path / "empty").exists() and (tmp_path / "run" / "synset.pt").exists()
    assert run_id(resolve(run)) != run_id(cfg_of()[0])


# ----------------------------------------------------------------------------------------------
# sweeps: one task per expert, launched first, shared by every run of the buffer


def test_a_sweep_builds_each_expert_once_as_its_own_task_then_the_runs(tmp_path):
    from hpcdd.sweep.grid import expand_grid
    from hpcdd.sweep.launch import execute, plan_launch
    from hpcdd.sweep.state import build_tasks, collect_states

    base = {k: v for k, v in BASE.items() if k != "ipc"}
    data = {"name": "mtt", "base": {**base, "iterations": 2, "eval_epochs": 1, "eval_n": 1, "eval_models": ["mlp"]},
            "grid": {"ipc": [1, 2]}, "seeds": 2,
            "exec": {"progress": False, "artefact_root": str(tmp_path / "art"), "threads": 1}}
    sweep = expand_grid(data, source="g")
    assert len(sweep.runs) == 4 and [p.ref.config.index for p in sweep.prereqs] == [0, 1]
    assert all(len(r.prereqs) == 2 for r in sweep.runs)  # every run waits for both experts
    runs = tmp_path / "runs"
    plan = plan_launch(sweep, runs, "debug")
    assert [t.stage for t in plan.to_submit()] == ["prereq"] * 2 + ["run"] * 4
    report = execute(plan, echo=lambda m: None)
    assert not report.failed and not report.skipped
    states = collect_states(runs, build_tasks(sweep, runs))
    assert {s.state for s in states.values()} == {"done"}
    for p in sweep.prereqs:
        d = tmp_path / "art" / p.key
        assert epoch_files(d) == [0, 1, 2, 3, 4] and (d / "log.txt").read_text().count("building mtt_expert") == 1
    assert plan_launch(sweep, runs, "debug").to_submit() == []  # a relaunch submits nothing
