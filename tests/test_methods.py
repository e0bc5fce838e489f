"""Every registered method runs end to end on a tiny dataset (adding one is tested for free),
and DM's batched forward equals the official per-class loop."""

import pytest
import torch

from hpcdd import prereq
from hpcdd.catalog import prerequisites, resolve
from hpcdd.config import ExecConfig, from_dict
from hpcdd.data import load_dataset
from hpcdd.distill.coreset import herding, kcenter
from hpcdd.runtime.accel import make_accelerator
from hpcdd.seeding import fresh_net
from hpcdd.specs import METHODS, SAMPLERS, load_impl

from helpers import tiny

SMOKE_PREREQS = ("mtt",)
"""Image methods with prerequisites whose smoke run builds them (tiny, see SMOKE)."""
IMAGE_METHODS = [m for m in METHODS.names() if METHODS.get(m).output == "images"
                 and (not METHODS.get(m).prerequisites or m in SMOKE_PREREQS)]


SMOKE = {"dc": dict(outer_loop=2, inner_loop=1), "dsa": dict(outer_loop=2, inner_loop=1),
         "mtt": dict(net="mlp", buffer_experts=2, buffer_epochs=3, max_start_epoch=2, expert_epochs=1,
                     syn_steps=3, buffer_batch=128)}
"""Loop counts for ipc 2, which the official DC table does not cover; a tiny expert buffer for mtt."""


def make(method, artefact_root=None, **kw):
    cfg = resolve(tiny(method=method, **{**SMOKE.get(method, {}), **kw}))
    data = load_dataset(cfg.dataset)
    spec = SAMPLERS.get(cfg.sampler)
    sampler = load_impl(spec.impl)(data.train, cfg.seed, from_dict(spec.params, cfg.sampler_params))
    artefacts = {}
    if prerequisites(cfg):  # built once per artefact root (the buffer of a mtt smoke run: 2 tiny experts)
        exe = ExecConfig(progress=False, artefact_root=str(artefact_root))
        artefacts = {r.role: prereq.build(r, exe, report=lambda m: None) for r in prerequisites(cfg)}
    return cfg, data, load_impl(METHODS.get(cfg.method).impl)(cfg, data.train, make_accelerator(), sampler,
                                                                  artefacts)


@pytest.fixture(scope="module")
def artefact_root(tmp_path_factory):
    return tmp_path_factory.mktemp("artefacts")


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_method_smoke(method, artefact_root):
    cfg, data, d = make(method, artefact_root)
    for it in range(cfg.iterations):
        metrics = d.step(it)
        assert all(isinstance(v, float) for v in metrics.values())
    syn = d.synthetic()
    n = data.info.num_classes * cfg.ipc
    assert syn.images.shape == (n, data.info.channels, data.info.im_size, data.info.im_size)
    assert torch.equal(syn.labels.sort().values, torch.arange(data.info.num_classes).repeat_interleave(cfg.ipc))
    assert torch.isfinite(syn.images).all()
    # state round trip
    _, _, d2 = make(method, artefact_root, seed=1)
    d2.load_state_dict(d.state_dict())
    assert torch.equal(d2.synthetic().images, syn.images)


def test_dm_changes_images_and_lowers_loss():
    cfg, data, d = make("dm", iterations=20, dsa=False)
    before = d.synthetic().images.clone()
    losses = [d.step(it)["loss"] for it in range(cfg.iterations)]
    assert not torch.equal(before, d.synthetic().images)
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize("dsa", [False, True])
def test_dm_batched_forward_equals_per_class_loop(dsa):
    cfg, data, d = make("dm", dsa=dsa)
    net = fresh_net(cfg.net, data.info, 0, "t")
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    real, syn = [], []
    for c in range(data.info.num_classes):
        r = data.train.class_images(c, cfg.batch_real, g)
        s = d.images[c * cfg.ipc:(c + 1) * cfg.ipc]
        if d.dsa is not None:
            draw = d.dsa.draw(1, g, batchmode=True, im_size=r.shape[-1])
            r, s = d.dsa.apply(r, draw), d.dsa.apply(s, draw)
        real.append(r)
        syn.append(s)
    batched = d.loss(net, real, syn)
    (g_batched,) = torch.autograd.grad(batched, d.images, retain_graph=True)
    looped = d.loss_per_class(net, real, syn)
    (g_looped,) = torch.autograd.grad(looped, d.images)
    assert batched.item() > 0
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_batched, g_looped, rtol=1e-4, atol=1e-7)


def test_herding_and_kcenter_pick_distinct_sensible_points():
    feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [5.0, 5.0], [0.1, 0.0]])
    h = herding(feats, 3)
    assert len(set(h.tolist())) == 3
    assert h[0].item() == 3  # closest to the mean (3.02, 3.0)
    k = kcenter(feats, 3, first=0)
    assert k.tolist() == [0, 1, 2]  # always the farthest remaining point


def test_dm_batchnorm_net_uses_one_unchunked_all_class_forward():
    """The official BN branch: one forward over every class's real images (batch statistics
    over the whole batch), never per class or per chunk."""
    cfg, data, d = make("dm", dsa=False, net="convnet3_bn")
    net = fresh_net(cfg.net, data.info, 0, "t")
    g = torch.Generator().manual_seed(0)
    real = [data.train.class_images(c, cfg.batch_real, g) for c in range(data.info.num_classes)]
    syn = [d.images[c * cfg.ipc:(c + 1) * cfg.ipc] for c in range(data.info.num_classes)]
    d.real_chunk = 7  # would change BN statistics if it were used
    with torch.no_grad():
        emb_real = net.embed(torch.cat(real)).view(data.info.num_classes, cfg.batch_real, -1).mean(1)
        emb_syn = net.embed(torch.cat(syn)).view(data.info.num_classes, cfg.ipc, -1).mean(1)
        expected = ((emb_real - emb_syn) ** 2).sum()
        torch.testing.assert_close(d.loss(net, real, syn), expected, rtol=1e-5, atol=1e-6)


def test_one_batchnorm_rule_and_one_set_up_for_dm_and_dc():
    """A BatchNorm is found by type whatever its class name, by DM and DC alike; a module that
    only has 'BatchNorm' in its name is not one. DM and DC share the set-up and the batches."""
    from torch import nn

    from hpcdd.distill import dc as dc_mod
    from hpcdd.distill import dm as dm_mod
    from hpcdd.distill.base import ImageDistiller
    from hpcdd.nets import embed
    from hpcdd.seeding import generator

    class Norm(nn.BatchNorm2d):  # a BatchNorm under another name
        pass

    class BatchNormFreeScale(nn.Module):  # not a BatchNorm, whatever its name says
        def forward(self, x):
            return x

    net = fresh_net("convnet3", load_dataset("digits").info, 0, "t")
    net.body.add_module("norm", Norm(128))
    net.body.add_module("scale", BatchNormFreeScale())
    _, _, dc = make("dc")
    dc.bn_statistics(net, generator(0, "bn"))
    assert not net.body.norm.training  # DC froze it for matching
    assert net.body.scale.training  # and left the look-alike alone
    _, _, dm = make("dm")
    assert dm_mod.has_batchnorm(net) and not dm_mod.has_batchnorm(fresh_net("convnet3", load_dataset("digits").info, 0, "t"))
    assert dc_mod.batchnorms is embed.batchnorms and dm_mod.has_batchnorm is embed.has_batchnorm  # one rule
    assert type(dm).batches is type(dc).batches is ImageDistiller.batches
    assert dm.real_chunk == dc.real_chunk and "REAL_CHUNK" not in vars(dm_mod) and "REAL_CHUNK" not in vars(dc_mod)
    for d in (dm, dc):
        assert d.images.shape == (20, 1, 28, 28) and d.labels.tolist() == [c for c in range(10) for _ in range(2)]
        assert d.optimizer.param_groups[0]["params"][0] is d.images and (d.dsa is not None) == d.cfg.dsa


def test_dm_docs_state_the_batchnorm_branch_the_code_runs():
    """The DM docstring and README describe the BN branch as the code (and the test above) does:
    one all-class forward, not a per-class loop."""
    from pathlib import Path

    from hpcdd.distill import dm as dm_mod

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    doc = " ".join(dm_mod.__doc__.split())
    for text in (doc, readme):
        assert "keep the per-class forward" not in text and "nets with BatchNorm keep the loop" not in text
    assert "one forward over every class's real images at once" in doc
    assert "BatchNorm nets take one forward over every class's real images at once" in readme
