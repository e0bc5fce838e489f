"""The generative methods (dim, global_local): a shared GAN pretraining prerequisite, stage 2 into
the generator, deployment at any ipc, bit-identical resume of both stages, NaN handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpcdd import prereq
from hpcdd.catalog import configs_from_flat, prereq_id, prerequisites, resolve
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
