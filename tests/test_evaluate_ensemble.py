"""Ensemble evaluation: N models of one architecture trained as one grouped module give each model
the result it gets alone (bitwise on CPU where the grouped kernels are, else within float rounding);
preemption and resume per group; explicit one-by-one fallback for nets that cannot be grouped."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hpcdd.augment import DSA, FULL_STRATEGY, default_strategy
from hpcdd.catalog import eval_id
from hpcdd.config import EvalConfig, ExecConfig, from_dict
from hpcdd.data import ImageSet, load_dataset
from hpcdd.ensemble import NotEnsemblable, augment_many, group_nets, split_states
from hpcdd.errors import ConfigError
from hpcdd.evaluate import _groups, ensemble_size, evaluate_source, train_from_scratch, train_grouped
from hpcdd.nets import NETS
from hpcdd.nets.base import StagedNet
from hpcdd.run import evaluate_run, run_one
from hpcdd.runtime.preempt import Interrupted
from hpcdd.seeding import fresh_net, generator
from hpcdd.artefact import ImageSource, Source, SyntheticSet

from helpers import QUIET, tiny

CPU = torch.device("cpu")
BITWISE = {"convnet3", "convnet3_bn", "convnet4", "convnet4_bn", "mlp", "vgg11"}
"""Nets whose grouped training is bit-identical to one-by-one here (CPU, one thread, deterministic);
the others (alexnet, lenet, resnet10/18) hit grouped-conv kernels that round differently."""
FLOAT64 = {"resnet10_imagenet", "resnet18_imagenet"}
"""Compared in float64: the ImageNet stem leaves a 1x1 map at layer4 of a 28 px input, so BatchNorm
over the last short batch (2 values) turns fp32 rounding into different training (resnet18_imagenet's
stem ends 150 % apart in fp32, one by one against grouped); in float64 they agree to 1e-9."""


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _head(test: ImageSet, n: int) -> ImageSet:
    """The first ``n`` test images (a cheaper test pass where the weights are what is compared)."""
    return ImageSet(test.info, test.data[:n], test.labels[:n])


def _real_set(data, ipc: int) -> SyntheticSet:
    g = generator(0, "test-pick")
    idx = torch.cat([c[torch.randperm(len(c), generator=g)[:ipc]] for c in data.train.class_indices])
    return SyntheticSet(data.train.images(idx), data.train.labels[idx])


class NoiseSource(Source):
    """A 'generator': every draw is fresh noise images from the generator it is given."""

    output = "generator"

    def __init__(self, info) -> None:
        self.info = info

    def sample(self, ipc, g):
        labels = torch.arange(self.info.num_classes).repeat_interleave(ipc)
        return SyntheticSet(torch.randn(len(labels), self.info.channels, self.info.im_size,
                                        self.info.im_size, generator=g), labels)

    def state_dict(self):
        return {}

    @classmethod
    def from_state_dict(cls, state):
        raise NotImplementedError


@pytest.fixture(autouse=True)
def one_thread_deterministic():
    """Bitwise claims hold at one thread in deterministic mode (at more threads the grouped kernels
    split their reductions differently: float rounding)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def _train_both(arch, info, n=2, epochs=2):
    """``n`` models of ``arch`` trained one by one and as one group on 10 noise images (batch 4:
    3 steps per epoch, the last one short), DSA on: their state dicts."""
    dsa = DSA(default_strategy("digits"))
    syn = NoiseSource(info).sample(1, generator(0, "noise"))
    kw = dict(epochs=epochs, lr=0.01, batch=4, dsa=dsa, device=CPU)
    alone = []
    for k in range(n):
        net = fresh_net(arch, info, 0, f"t-{k}-init")
        train_from_scratch(net, lambda e: syn, gen=generator(0, f"t-{k}-train"), **kw)
        alone.append(net.state_dict())
    nets = [fresh_net(arch, info, 0, f"t-{k}-init") for k in range(n)]
    grouped = group_nets(nets, (info.channels, info.im_size, info.im_size))
    train_grouped(grouped, [lambda e: syn] * n, [generator(0, f"t-{k}-train") for k in range(n)], **kw)
    return alone, split_states(grouped, n)


@pytest.mark.parametrize("arch", NETS.names())
def test_every_net_trains_as_a_group_like_one_by_one(arch, digits):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if arch in FLOAT64 else old)
    try:
        alone, grouped = _train_both(arch, digits.info)
    finally:
        torch.set_default_dtype(old)
    for a, g in zip(alone, grouped):
        assert a.keys() == g.keys()
        for key in a:
            if arch in FLOAT64 and a[key].is_floating_point():
                assert a[key].dtype == torch.float64
                assert (g[key] - a[key]).abs().max() <= 1e-9 * (1 + a[key].abs().max()), key
            elif arch in BITWISE:
                assert torch.equal(a[key], g[key]), key
            else:  # rounding, amplified where it flips a ReLU (BN over 2-4 images: resnet18 ~2e-3)
                assert (g[key].float() - a[key].float()).norm() <= 1e-2 * a[key].float().norm() + 1e-6, key
    if arch in BITWISE | FLOAT64:
        return
    assert any(not torch.equal(a[k], g[k]) for a, g in zip(alone, grouped) for k in a), \
        f"{arch} is bitwise now: move it to BITWISE"



def test_five_models_as_one_ensemble_give_the_accuracies_of_five_one_by_one(digits):
    syn = ImageSource(_real_set(digits, 3))
    ev = EvalConfig(models=("convnet3", "mlp"), n=5, epochs=2, batch=16)
    kw = dict(seed=3, dataset="digits", ipc=None, device=CPU, progress=False)
    logs: list[str] = []
    off = evaluate_source(syn, digits.test, digits.info, ev, ensemble="off", **kw)
    on = evaluate_source(syn, digits.test, digits.info, ev, ensemble="on", log=logs.append, **kw)
    assert on == off
    assert len(set(off["convnet3"]["accs"])) > 1  # five different models, not one five times
    assert logs == ["convnet3 models 1-5/5: training as one ensemble", "mlp models 1-5/5: training as one ensemble"]


@pytest.mark.parametrize("kind", ["fixed", "resample"])
def test_each_member_draws_its_own_generator_images(kind, digits):
    """Per-model image draws (once, or every epoch) are the model's own, in groups as alone."""
    ev = EvalConfig(models=("convnet3",), n=3, epochs=2, kind=kind, ipc=1)
    kw = dict(seed=0, dataset="digits", ipc=1, device=CPU, progress=False)
    src, test = NoiseSource(digits.info), _head(digits.test, 100)
    off = evaluate_source(src, test, digits.info, ev, ensemble="off", **kw)
    on = evaluate_source(src, test, digits.info, ev, ensemble="on", ensemble_max=2, **kw)
    assert on == off


def test_a_preempted_ensemble_restarts_its_group_and_keeps_finished_groups(tmp_path):
    """Groups of at most 2 out of 3 models: stopped in the second group, the first group's two
    models are saved and the resume trains only model 3; stopped in the first, none is saved."""
    run_one(tiny(method="random"), tmp_path, QUIET, evaluate=False)
    ev = EvalConfig(epochs=2, n=3)
    exe = from_dict(ExecConfig, {"progress": False, "eval_ensemble": "on", "eval_ensemble_max": 2}, where="t")
    models = tmp_path / "eval" / eval_id(ev) / "models"
    calls = {"n": 0}

    def stop_in_group(group_epochs_before):  # should_stop is asked once per epoch of a group
        def stop():
            calls["n"] += 1
            return calls["n"] > group_epochs_before
        return stop

    with pytest.raises(Interrupted):
        evaluate_run(tmp_path, ev, exe, should_stop=stop_in_group(1))  # epoch 2 of group 1
    assert not models.exists() or not any(models.iterdir())
    calls["n"] = 0
    with pytest.raises(Interrupted):
        evaluate_run(tmp_path, ev, exe, should_stop=stop_in_group(ev.epochs))  # group 2 starts
    assert sorted(p.name for p in models.iterdir()) == ["convnet3-0.json", "convnet3-1.json"]
    saved = [json.loads((models / f"convnet3-{k}.json").read_text())["acc"] for k in range(2)]
    row = evaluate_run(tmp_path, ev, exe)
    log = (tmp_path / "log.txt").read_text()
    assert "resuming with 2 model(s) already done" in log
    assert "convnet3 models 1-2/3: training as one ensemble" in log
    assert row["accs"][:2] == saved
    fresh = tmp_path / "fresh"
    run_one(tiny(method="random"), fresh, QUIET, evaluate=False)
    assert evaluate_run(fresh, ev, QUIET)["accs"] == row["accs"]  # one by one, uninterrupted


class _LayerNormNet(StagedNet):
    """A layer the ensemble does not know (LayerNorm over a whole feature map)."""

    def __init__(self, channels, num_classes, im_size):
        stages = [("block1", nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.LayerNorm([4, im_size, im_size]),
                                           nn.ReLU(), nn.AdaptiveAvgPool2d(2)))]
        super().__init__(stages, nn.Linear(16, num_classes), ["block1"])


class _ChannelMixNet(StagedNet):
    """Known layers, but a forward that mixes all channels (breaks the grouped layout)."""

    def __init__(self, channels, num_classes, im_size):
        stages = [("block1", nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)))]
        super().__init__(stages, nn.Linear(16, num_classes), ["block1"])

    def forward(self, x):
        h = self.body(x)
        return self.classifier((h - h.mean(1, keepdim=True)).flatten(1))


@pytest.mark.parametrize("net_cls,why", [(_LayerNormNet, "LayerNorm"), (_ChannelMixNet, "channels apart")])
def test_a_net_that_cannot_be_grouped_is_trained_one_by_one(net_cls, why, digits, monkeypatch):
    monkeypatch.setitem(NETS._items, "oddnet", lambda c, k, s: net_cls(c, k, s))
    info = digits.info
    with pytest.raises(NotEnsemblable, match=why):
        group_nets([fresh_net("oddnet", info, 0, f"n{k}") for k in range(2)], (info.channels, info.im_size, info.im_size))
    ev = EvalConfig(models=("oddnet", "mlp"), n=3, epochs=2)
    kw = dict(seed=0, dataset="digits", ipc=None, device=CPU, progress=False)
    syn, test = ImageSource(_real_set(digits, 2)), _head(digits.test, 100)
    logs: list[str] = []
    on = evaluate_source(syn, test, info, ev, ensemble="on", log=logs.append, **kw)
    assert on == evaluate_source(syn, test, info, ev, ensemble="off", **kw)
    assert logs[0].startswith("oddnet: 3 models trained one by one, not as an ensemble:") and why in logs[0]
    assert logs[1] == "mlp models 1-3/3: training as one ensemble"


def test_augment_many_is_each_models_own_dsa_call():
    dsa = DSA(FULL_STRATEGY)
    xs = [torch.randn(n, 3, 16, 16, generator=generator(n, "x")) for n in (5, 5, 5, 5, 5, 5, 5, 1)]
    for step in range(6):  # enough draws that ops repeat across models and differ between them
        gens_a = [generator(m, f"dsa{step}") for m in range(len(xs))]
        gens_b = [generator(m, f"dsa{step}") for m in range(len(xs))]
        for got, x, g in zip(augment_many(dsa, xs, gens_a), xs, gens_b):
            assert torch.equal(got, dsa(x, g, batchmode=False))


def test_group_sizes_follow_the_exec_setting():
    cuda = torch.device("cuda")  # only the device type is read
    assert ensemble_size("auto", 0, CPU) == 1 and ensemble_size("off", 0, cuda) == 1
    assert ensemble_size("auto", 0, cuda) > 100 and ensemble_size("on", 0, CPU) > 100
    assert ensemble_size("on", 2, CPU) == 2
    pairs = [("convnet3", 1), ("convnet3", 2), ("convnet3", 4), ("mlp", 0), ("mlp", 1)]
    assert _groups(pairs, 2) == [[("convnet3", 1), ("convnet3", 2)], [("convnet3", 4)], [("mlp", 0), ("mlp", 1)]]
    assert _groups(pairs, 1) == [[p] for p in pairs]


@pytest.mark.parametrize("bad", [{"eval_ensemble": "yes"}, {"eval_ensemble_max": -1}])
def test_bad_ensemble_settings_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        from_dict(ExecConfig, bad, where="t")
