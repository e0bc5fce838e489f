"""DC / DSA: the official distance, the loop table and its check, the batched synthetic-gradient
pass against the per-class loop, learning, resume, and the CLI."""

import json

import pytest
import torch

from hpcdd.catalog import resolve
from hpcdd.cli import main
from hpcdd.config import from_dict
from hpcdd.data import load_dataset
from hpcdd.distill.dc import match_loss
from hpcdd.errors import ConfigError
from hpcdd.nets.embed import batchnorms
from hpcdd.run import run_one
from hpcdd.runtime.accel import make_accelerator
from hpcdd.runtime.preempt import Interrupted
from hpcdd.seeding import fresh_net, generator
from hpcdd.specs import METHODS, SAMPLERS, load_impl
from hpcdd.specs.dc import LOOPS, loops

from helpers import QUIET, synset, tiny

SMALL = dict(ipc=2, outer_loop=2, inner_loop=1, batch_real=8)
"""Tiny loop counts (ipc 2 is outside the official table, so both loops are given)."""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches run faster on one thread (and no slower on a busy machine); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def same_batches(d, model):
    """``d.batches`` with the sampler rewound and a fixed augmentation generator: the same real
    batches and DSA draws on every call."""
    state = d.sampler.state_dict()
    out = d.batches(model, generator(0, "aug"))
    d.sampler.load_state_dict(state)
    return out


def make(method="dc", **kw):
    cfg = resolve(tiny(method=method, **{**SMALL, **kw}))
    data = load_dataset(cfg.dataset)
    spec = SAMPLERS.get(cfg.sampler)
    sampler = load_impl(spec.impl)(data.train, cfg.seed, from_dict(spec.params, cfg.sampler_params))
    return cfg, data, load_impl(METHODS.get(cfg.method).impl)(cfg, data.train, make_accelerator(), sampler)


# -- the distance --------------------------------------------------------------------------------

def official_distance_wb(gwr, gws):
    """utils.py distance_wb of VICO-UoE/DatasetCondensation, transcribed."""
    shape = gwr.shape
    if len(shape) == 4:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
        gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
    elif len(shape) == 3:
        gwr = gwr.reshape(shape[0], shape[1] * shape[2])
        gws = gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:
        return torch.tensor(0, dtype=torch.float)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def official_match_loss(gw_syn, gw_real, metric):
    if metric == "ours":
        dis = torch.tensor(0.0)
        for gwr, gws in zip(gw_real, gw_syn):
            dis += official_distance_wb(gwr, gws)
        return dis
    vr = torch.cat([g.reshape(-1) for g in gw_real])
    vs = torch.cat([g.reshape(-1) for g in gw_syn])
    if metric == "mse":
        return torch.sum((vs - vr) ** 2)
    return 1 - torch.sum(vr * vs, dim=-1) / (torch.norm(vr, dim=-1) * torch.norm(vs, dim=-1) + 0.000001)


SHAPES = [(8, 3, 3, 3), (8,), (4, 5, 6), (10, 32), (10,)]


def random_grads(g, lead=()):
    return [torch.randn(*lead, *s, generator=g) for s in SHAPES]


@pytest.mark.parametrize("metric", ["ours", "mse", "cos"])
def test_match_loss_equals_the_official_code(metric):
    g = torch.Generator().manual_seed(0)
    gs, gr = random_grads(g), random_grads(g)
    expected = official_match_loss(gs, gr, metric)
    torch.testing.assert_close(match_loss(gs, gr, metric), expected)
    assert expected.item() != 0
    # a leading class dimension: the sum of the per-class distances
    gs3, gr3 = random_grads(g, (3,)), random_grads(g, (3,))
    per_class = sum(official_match_loss([x[c] for x in gs3], [x[c] for x in gr3], metric) for c in range(3))
    torch.testing.assert_close(match_loss(gs3, gr3, metric, batch_dims=1), per_class)


def test_one_dimensional_gradients_contribute_nothing_to_ours():
    g = torch.Generator().manual_seed(1)
    gs, gr = random_grads(g), random_grads(g)
    assert match_loss([gs[1], gs[4]], [gr[1], gr[4]]).item() == 0.0
    changed = [x.clone() for x in gs]
    changed[1] += 100.0  # a bias gradient
    torch.testing.assert_close(match_loss(changed, gr), match_loss(gs, gr), rtol=0, atol=0)
    # identical gradients: distance ~0 (up to the eps), opposite ones: 2 per row
    assert abs(match_loss(gr, gr).item()) < 1e-4
    rows = 8 + 4 + 10
    torch.testing.assert_close(match_loss([-x for x in gr], gr), torch.tensor(2.0 * rows), rtol=1e-5, atol=1e-4)


# -- loops and the check --------------------------------------------------------------------------

def test_loops_table_is_the_official_one():
    assert LOOPS == {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    assert loops(10) == (10, 50)
    assert loops(10, outer_loop=3) == (3, 50)
    assert loops(7, 2, 3) == (2, 3)


def test_check_refuses_an_ipc_outside_the_table_unless_both_loops_are_given():
    for kw in ({}, {"outer_loop": 2}, {"inner_loop": 2}):
        with pytest.raises(ConfigError) as e:
            resolve(tiny(method="dc", ipc=7, **kw))
        assert "\n" not in str(e.value) and "ipc 7" in str(e.value)
    cfg = resolve(tiny(method="dsa", ipc=7, outer_loop=2, inner_loop=3))
    assert (cfg.params["outer_loop"], cfg.params["inner_loop"]) == (2, 3)
    assert resolve(tiny(method="dc", ipc=1)).params["outer_loop"] is None  # the table's (1, 1)


@pytest.mark.parametrize("bad", [dict(outer_loop=0), dict(inner_loop=-1), dict(lr_net=0.0),
                                 dict(batch_train=0), dict(dis_metric="l1"), dict(momentum_net=1.0)])
def test_bad_parameters_are_one_line_errors(bad):
    with pytest.raises(ConfigError) as e:
        resolve(tiny(method="dc", **{**SMALL, **bad}))
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)


def test_dc_and_dsa_resolve_with_their_fixed_dsa_and_paper_defaults():
    dc = resolve(tiny(method="dc", ipc=1, dsa=True, iterations=None))
    dsa = resolve(tiny(method="dsa", ipc=1, dsa=False, iterations=None))
    assert dc.dsa is False and dsa.dsa is True
    assert dc.iterations == dsa.iterations == 1000
    assert dc.params["lr_img"] == 0.1 and dc.params["momentum_img"] == 0.5 and dc.params["init"] == "real"
    assert dc.params["lr_net"] == 0.01 and dc.params["batch_train"] == 256 and dc.params["dis_metric"] == "ours"


# -- the method ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,net", [("dc", "convnet3"), ("dsa", "convnet3"), ("dsa", "convnet3_bn")])
def test_batched_synthetic_gradients_equal_the_per_class_loop(method, net):
    cfg, data, d = make(method, net=net)
    model = fresh_net(cfg.net, data.info, 0, "t")
    model.train()
    if batchnorms(model):
        d.bn_statistics(model, generator(0, "bn"))
        assert all(not m.training for m in batchnorms(model))
    real, syn = same_batches(d, model)
    batched = d.match(model, real, syn, batched=True)
    (g_batched,) = torch.autograd.grad(batched, d.images)
    real, syn = same_batches(d, model)  # the same draws again (a fresh graph)
    looped = d.match(model, real, syn, batched=False)
    (g_looped,) = torch.autograd.grad(looped, d.images)
    assert batched.item() > 0 and g_looped.abs().sum() > 0
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    scale = g_looped.abs().max().item()
    torch.testing.assert_close(g_batched, g_looped, rtol=1e-4, atol=1e-4 * scale)


def test_chunked_real_gradient_equals_one_pass():
    cfg, data, d = make("dsa")
    model = fresh_net(cfg.net, data.info, 0, "t")
    real, _ = d.batches(model, generator(0, "aug"))
    whole = d.real_grads(model, real)
    d.real_chunk = 5
    for a, b in zip(d.real_grads(model, real), whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bf16_real_gradients_stay_close_to_fp32():
    cfg, data, d = make("dc")
    model = fresh_net(cfg.net, data.info, 0, "t")
    real, _ = d.batches(model, generator(0, "aug"))
    fp32 = d.real_grads(model, real)
    d.cfg = resolve(tiny(method="dc", precision="bf16", **SMALL))
    bf16 = d.real_grads(model, real)
    assert all(a.dtype == torch.float32 for a in bf16)
    cos = torch.nn.functional.cosine_similarity(torch.cat([a.flatten() for a in fp32]),
                                                torch.cat([b.flatten() for b in bf16]), dim=0)
    assert cos > 0.99


@pytest.mark.skipif("dream" not in SAMPLERS, reason="no dream sampler registered")
def test_a_dream_sampler_plugs_in_by_config():
    cfg, data, d = make("dsa", sampler="dream", iterations=1)
    m = d.step(0)
    assert m["loss"] > 0


def test_bn_statistics_take_one_ema_step_then_freeze():
    cfg, data, d = make("dc", net="convnet3_bn")
    model = fresh_net(cfg.net, data.info, 0, "t")
    bn = batchnorms(model)[0]
    d.bn_statistics(model, generator(0, "bn"))
    assert not bn.training and int(bn.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_matching_steps_lower_the_loss_on_a_fixed_net():
    cfg, data, d = make("dc")
    model = fresh_net(cfg.net, data.info, 0, "t")
    real, _ = d.batches(model, generator(0, "aug"))
    ipc = cfg.ipc
    losses = []
    for _ in range(5):
        syn = [d.images[c * ipc:(c + 1) * ipc] for c in range(data.info.num_classes)]
        loss = d.match(model, real, syn)
        (g,) = torch.autograd.grad(loss, d.images)
        d.optimizer.zero_grad()
        d.images.grad = g
        d.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_steps_change_the_images_and_the_loss_falls_over_iterations():
    cfg, data, d = make("dc", iterations=6, outer_loop=1, inner_loop=1)
    before = d.synthetic().images.clone()
    metrics = [d.step(it) for it in range(cfg.iterations)]
    assert not torch.equal(before, d.synthetic().images)
    assert all(set(m) >= {"loss", "loss_first", "loss_last"} for m in metrics)
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_inner_loop_trains_the_net_on_the_synthetic_set():
    cfg, data, d = make("dsa", outer_loop=3, inner_loop=2)
    m = d.step(0)
    assert 0 < m["train_loss"] < 10 and m["loss"] > 0


def test_resume_is_bit_identical(tmp_path):
    cfg = tiny(method="dsa", ipc=1, iterations=3, outer_loop=2, inner_loop=1, batch_real=8)
    ref = tmp_path / "ref"
    run_one(cfg, ref, QUIET, evaluate=False)
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] >= 2

    out = tmp_path / "resumed"
    with pytest.raises(Interrupted) as e:
        run_one(cfg, out, QUIET, evaluate=False, should_stop=stop_after_two)
    assert e.value.it == 2
    run_one(cfg, out, QUIET, evaluate=False)
    assert "resumed at iteration 2" in (out / "log.txt").read_text()
    assert torch.equal(synset(out)["images"], synset(ref)["images"])


def test_cli_distills_and_evaluates_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["distill", "--method", "dc", "--dataset", "digits", "--ipc", "1", "--iterations", "2",
                 "--batch-real", "8", "--eval-epochs", "1", "--eval-n", "1", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    [result] = list((out / "eval").glob("*/result.json"))
    row = json.loads(result.read_text())
    assert row["method"] == "dc" and 0.0 <= row["acc_mean"] <= 1.0
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 2
