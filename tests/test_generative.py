"""The generative methods (dim, global_local): a shared GAN pretraining prerequisite, stage 2 into
the generator, deployment at any ipc, bit-identical resume of both stages, NaN handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpcdd import prereq
from hpcdd.catalog import configs_from_flat, eval_id, prereq_id, prerequisites, resolve
from hpcdd.cli import main
from hpcdd.config import EvalConfig, ExecConfig
from hpcdd.errors import ConfigError, NonFiniteLossError
from hpcdd.run import run_one
from hpcdd.runtime.checkpoint import checkpoint_files
from hpcdd.runtime.preempt import Interrupted
from hpcdd.artefact import load_source

from helpers import stop_after

TINY = {"dataset": "digits", "iterations": 3, "gan_steps": 4, "gan_width": 8, "gan_batch": 32, "match_batch": 20,
        "pool_warmup": 1, "pool": ["convnet3"], "local_layers": ["convnet3:block2"], "ipc": 2}
EVAL = EvalConfig(epochs=1, n=1, ipc=2)


def exe(root: Path, **kw) -> ExecConfig:
    return ExecConfig(progress=False, checkpoint_every=2, artefact_root=str(root), **kw)


def cfg(**kw):
    run, _ = configs_from_flat({"method": "global_local", **TINY, **kw}, where="test")
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One global_local run (its pretraining in the artefact root) and the root."""
    root = tmp_path_factory.mktemp("gen")
    run_one(cfg(), root / "run", exe(root / "art"), evals=[EVAL])
    return root


def test_dim_and_global_local_share_one_pretraining_across_seeds_and_ipc():
    refs = {prereq_id(prerequisites(resolve(cfg(method=m, seed=s, ipc=i)))[0])
            for m in ("dim", "global_local") for s in (0, 1) for i in (1, 10)}
    assert len(refs) == 1
    assert resolve(cfg(method="dim")).params["lambda_local"] == 0.0
    assert resolve(cfg()).params["lambda_local"] == 0.001 and resolve(cfg()).params["lambda_global"] == 0.01
    other = prereq_id(prerequisites(resolve(cfg(gan_width=16)))[0])
    assert other not in refs


def test_the_run_used_the_prerequisite_and_logged_both_terms(trained):
    run = trained / "run"
    [gan] = json.loads((run / "prerequisites.json").read_text()).values()
    assert (Path(gan) / "gan.pt").exists() and (Path(gan) / "done").exists()
    assert sorted(p.name for p in (Path(gan) / "samples").iterdir())  # per-class grids as it trained
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("global" in r and "local" in r and "g_adv" in r and "d_loss" in r for r in rows if "loss" in r)


def test_dim_has_no_local_term(tmp_path, trained):
    run_one(cfg(method="dim"), tmp_path / "dim", exe(trained / "art"), evaluate=False)
    rows = [json.loads(l) for l in (tmp_path / "dim" / "metrics.jsonl").read_text().splitlines()]
    assert all("global" in r and "local" not in r for r in rows if "loss" in r)


def test_one_generator_deploys_any_ipc_without_retraining(trained, tmp_path, capsys):
    run = trained / "run"
    before = (run / "generator.pt").read_bytes()
    for ipc in (1, 10, 50):
        out = tmp_path / f"ipc{ipc}.pt"
        assert main(["generate", str(run), "--ipc", str(ipc), "--out", str(out), "--seed", "3"]) == 0
        syn = torch.load(out, weights_only=True)
        assert syn["images"].shape == (10 * ipc, 1, 28, 28) and torch.equal(
            syn["labels"], torch.arange(10).repeat_interleave(ipc))
        assert torch.isfinite(syn["images"]).all()
    again = tmp_path / "again.pt"
    main(["generate", str(run), "--ipc", "10", "--out", str(again), "--seed", "3"])
    assert torch.equal(torch.load(again, weights_only=True)["images"],
                       torch.load(tmp_path / "ipc10.pt", weights_only=True)["images"])
    assert (run / "generator.pt").read_bytes() == before
    capsys.readouterr()
    assert main(["generate", str(run), "--ipc", "0", "--out", str(tmp_path / "x.pt")]) == 2
    assert main(["generate", str(run), "--ipc", "2", "--out", str(again)]) == 2  # exists: not overwritten
    source, _ = load_source(run / "generator.pt", "generator")
    assert source.sample(3, torch.Generator().manual_seed(0)).images.shape[0] == 30


def test_evaluation_kinds_on_a_generator(trained):
    from hpcdd.run import evaluate_run

    run = trained / "run"
    fixed = evaluate_run(run, EvalConfig(epochs=1, n=1, ipc=5), exe(trained / "art"))
    resample = evaluate_run(run, EvalConfig(epochs=2, n=1, ipc=5, kind="resample"), exe(trained / "art"))
    assert fixed["protocol"] == "dc1" and resample["protocol"] == "dim-resample2"
    assert fixed["ipc"] == resample["ipc"] == 5 and fixed["method"] == "global_local"


def test_show_draws_a_generator_grid(trained, tmp_path, capsys):
    assert main(["show", str(trained / "run"), "--ipc", "3", "-o", str(tmp_path / "g.png")]) == 0
    assert "3 generated images per class" in capsys.readouterr().out and (tmp_path / "g.png").stat().st_size


def test_pretraining_resume_is_bit_identical(tmp_path):
    [ref] = prerequisites(resolve(cfg(gan_steps=5)))
    with pytest.raises(Interrupted):
        prereq.build(ref, exe(tmp_path / "a"), should_stop=stop_after(3))
    a = prereq.build(ref, exe(tmp_path / "a"))
    assert "resumed at iteration 3" in (a / "log.txt").read_text()
    b = prereq.build(ref, exe(tmp_path / "b"))
    sa, sb = torch.load(a / "gan.pt", weights_only=True), torch.load(b / "gan.pt", weights_only=True)
    for key in ("G", "D"):
        for name in sa[key]:
            assert torch.equal(sa[key][name], sb[key][name]), f"{key}.{name}"


def test_stage_two_resume_is_bit_identical(tmp_path, trained):
    art = exe(trained / "art")
    with pytest.raises(Interrupted):
        run_one(cfg(iterations=4), tmp_path / "a", art, evaluate=False, should_stop=stop_after(2))
    run_one(cfg(iterations=4), tmp_path / "a", art, evaluate=False)
    assert "resumed at iteration 2" in (tmp_path / "a" / "log.txt").read_text()
    run_one(cfg(iterations=4), tmp_path / "b", art, evaluate=False)
    wa = torch.load(tmp_path / "a" / "generator.pt", weights_only=True)["weights"]
    wb = torch.load(tmp_path / "b" / "generator.pt", weights_only=True)["weights"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_nan_in_a_gan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    import hpcdd.generative.gan as gan

    real = gan.d_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 4:
            metrics["d_loss"] = float("nan")
        return loss, metrics

    monkeypatch.setattr(gan, "d_loss", poisoned)
    [ref] = prerequisites(resolve(cfg(gan_steps=6)))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at iteration 3; the last good "
                                                 r"checkpoint \(iteration 2\) is kept"):
        prereq.build(ref, exe(tmp_path))
    out = prereq.ref_dir(ref, exe(tmp_path))
    assert not (out / "done").exists() and not (out / "gan.pt").exists()
    [(it, path)] = checkpoint_files(out / "checkpoint")
    state = torch.load(path, weights_only=True)
    assert it == 2 and all(torch.isfinite(v).all() for v in state["job"]["G"].values() if v.is_floating_point())


@pytest.mark.parametrize("flags, words", [
    (["--pool", "convnet3,nope"], "unknown net 'nope' in pool"),
    (["--local-layers", "convnet3"], "arch:layer"),
    (["--lambda-local", "-1"], "lambda_global and lambda_local must be >= 0"),
    (["--gan-label-mode", "words"], "gan label_mode must be one of onehot, embed"),
    (["--gan-steps", "0"], "gan steps must be >= 1"),
    (["--eval-kind", "resample", "--ipc", "0"], "ipc must be >= 1"),
])
def test_bad_generative_values_are_one_line(capsys, tmp_path, flags, words):
    code = main(["distill", "--method", "global_local", "--dataset", "digits", "--out", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_missing_local_layer_for_a_pool_model_is_refused():
    with pytest.raises(ConfigError, match="local_layers names no layer for pool model"):
        resolve(cfg(pool=["convnet3", "resnet18"], local_layers=["convnet3:block2"]))


# ----------------------------------------------------------------------------------------------
# issue 18: cgan, DiM's pool and augmentation, timing, bf16, the running pretraining's identity


def test_the_running_fmnist_pretraining_keeps_its_identity():
    """launch/generative_fmnist.yaml reuses the pretraining built with these keys (gan_pretrain/9d868e47ea1f)."""
    keys = {"dataset": "fashionmnist", "gan_steps": 9000, "gan_batch": 64, "gan_width": 64, "gan_lr": 0.0002}
    for method in ("cgan", "dim", "global_local"):
        run, _ = configs_from_flat({"method": method, **keys}, where="test")
        assert prereq_id(prerequisites(resolve(run))[0]) == "9d868e47ea1f"
    run, _ = configs_from_flat({"method": "dim", "gan_precision": "bf16", **keys}, where="test")
    assert prereq_id(prerequisites(resolve(run))[0]) != "9d868e47ea1f"


def test_cgan_is_the_pretrained_generator_without_matching(trained, tmp_path):
    gan_keys = {k: v for k, v in TINY.items() if k.startswith("gan_") or k in ("dataset", "ipc")}
    run, _ = configs_from_flat({"method": "cgan", **gan_keys}, where="test")
    assert resolve(run).iterations == 0
    assert prereq_id(prerequisites(resolve(run))[0]) == prereq_id(prerequisites(resolve(cfg()))[0])
    run_one(run, tmp_path / "cgan", exe(trained / "art"), evaluate=False)
    [gan] = json.loads((trained / "run" / "prerequisites.json").read_text()).values()
    weights = torch.load(tmp_path / "cgan" / "generator.pt", weights_only=True)["weights"]
    stage1 = torch.load(Path(gan) / "gan.pt", weights_only=True)["G"]
    assert weights.keys() == stage1.keys() and all(torch.equal(weights[k], stage1[k]) for k in weights)
    tuned = torch.load(trained / "run" / "generator.pt", weights_only=True)["weights"]
    assert not all(torch.equal(tuned[k], stage1[k]) for k in tuned)  # stage 2 moved the generator


def test_dims_pool_is_the_default_at_28_px_and_the_cifar_resnets_stay_available():
    from hpcdd.specs.generative import pool_models

    assert pool_models(None, 28) == ("convnet3", "resnet10_imagenet", "resnet18_imagenet")
    assert pool_models(("resnet10", "resnet18"), 28) == ("resnet10", "resnet18")
    resolve(cfg(pool=["resnet10", "resnet18"], local_layers=["resnet10:layer2", "resnet18:layer2"]))
    default, _ = configs_from_flat({"method": "global_local", "dataset": "digits"}, where="test")
    assert resolve(default).params["pool"] is None  # DiM's pool, and a local layer for each of its models


def test_the_run_records_pool_training_against_the_gan_step(trained):
    done = json.loads((trained / "run" / "done").read_text())
    info = done["method_info"]
    assert info["pool_seconds"] > 0 and info["gan_seconds"] > 0 and info["pool_s_per_step"] > 0
    row = json.loads((trained / "run" / "eval" / eval_id(EVAL) / "result.json").read_text())
    assert row["distill_pool_seconds"] == info["pool_seconds"] and row["distill_gan_s_per_step"] > 0


def test_matching_augments_real_and_generated_with_all_ops_of_one_draw(trained, tmp_path, monkeypatch):
    """Every matching batch gets colour, crop and cutout together, the same draw for both halves;
    every pool batch gets colour and crop with per-sample parameters."""
    from hpcdd.augment import DSA

    seen = []
    real_apply = DSA.apply

    def spy(self, x, draw):
        seen.append((self.strategy, draw.op, {k: v.shape[0] for k, v in draw.params.items()}, x.shape[0], id(draw)))
        return real_apply(self, x, draw)

    monkeypatch.setattr(DSA, "apply", spy)
    run_one(cfg(iterations=1), tmp_path / "r", exe(trained / "art"), evaluate=False)
    match = [s for s in seen if s[0] == "color_crop_cutout"]
    pool = [s for s in seen if s[0] == "color_crop"]
    assert len(match) == 2 and match[0][4] == match[1][4] and match[0][1] == "color+crop+cutout"
    assert set(match[0][2].values()) == {1}
    assert pool and all(s[1] == "color+crop" and set(s[2].values()) == {s[3]} for s in pool)


def test_bf16_gan_steps_train_and_keep_fp32_weights(tmp_path):
    [ref] = prerequisites(resolve(cfg(gan_steps=2, gan_precision="bf16")))
    out = prereq.build(ref, exe(tmp_path))
    state = torch.load(out / "gan.pt", weights_only=True)
    assert state["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state["G"].values()
               if v.is_floating_point())


def test_the_fmnist_grid_measures_what_issue_18_asks():
    from hpcdd.sweep.grid import load_grid

    repo = Path(__file__).resolve().parents[1]
    sweep = load_grid(repo / "launch" / "generative_fmnist.yaml")
    assert [p.key for p in sweep.prereqs] == ["gan_pretrain/9d868e47ea1f"]  # the pretraining already built
    cells = {(c.config.method, c.eval.ipc or c.config.ipc, c.eval.kind, c.eval.models, c.config.seed): c.eval.n
             for c in sweep.cells}
    methods = ("cgan", "dim", "global_local", "random")
    for m in methods:
        for ipc in (1, 10, 50):
            assert (m, ipc, "fixed", ("convnet3",), 0) in cells
    for m in ("dim", "global_local"):
        assert all(cells[(m, 10, "fixed", ("convnet3",), s)] >= 5 for s in (0, 1, 2))
        assert cells[(m, 10, "fixed", ("alexnet", "vgg11", "resnet18"), 0)] >= 3
    assert {(m, ipc) for m, ipc, kind, *_ in cells if kind == "resample"} == {
        (m, ipc) for m in methods[:3] for ipc in (10, 50)}
    assert cells[("random", 10, "fixed", ("alexnet", "vgg11", "resnet18"), 0)] >= 3
    assert {c.eval.epochs for c in sweep.cells} == {100}
    ablation = load_grid(repo / "launch" / "ablation_local.yaml")
    assert ablation.prereqs == sweep.prereqs
    shared = {(c.run_id, c.eval_id) for c in sweep.cells} & {(c.run_id, c.eval_id) for c in ablation.cells}
    assert len(shared) == 1  # lambda_local 1e-3 is the main sweep's global_local seed 0
