"""Shapes, feature layers, gradients and parameter counts of every registered net."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpcdd.errors import ConfigError
from hpcdd.nets import NETS, Net, build

EXPECTED_NETS = {
    "convnet3", "convnet3_bn", "convnet4", "convnet4_bn", "alexnet",
    "vgg11", "resnet10", "resnet18", "resnet10_imagenet", "resnet18_imagenet", "mlp", "lenet",
}  # fmt: skip
SHAPES = [(1, 28), (1, 32), (3, 28), (3, 32)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(channels: int, im_size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, im_size, im_size, generator=_gen(seed))


def test_expected_names_registered() -> None:
    assert EXPECTED_NETS <= set(NETS.names())


@pytest.mark.parametrize("name", NETS.names())
@pytest.mark.parametrize(("channels", "im_size"), SHAPES)
def test_forward_embed_features(name: str, channels: int, im_size: int) -> None:
    net = build(name, channels, 10, im_size, generator=_gen(0))
    assert isinstance(net, Net)
    x = _batch(channels, im_size)
    with torch.no_grad():
        logits = net(x)
        emb = net.embed(x)
        assert logits.shape == (2, 10)
        assert emb.shape == (2, net.embed_dim)
        # forward == classifier(embed): embed is exactly the classifier's input
        torch.testing.assert_close(net.classifier(emb), logits)
        assert net.feature_layers, name
        for layer in net.feature_layers:
            f = net.features(x, layer)
            assert f.shape[0] == 2 and torch.isfinite(f).all(), (name, layer)
        with pytest.raises(ConfigError):
            net.features(x, "no_such_layer")


@pytest.mark.parametrize("name", NETS.names())
def test_gradients_flow(name: str) -> None:
    net = build(name, 3, 10, 32, generator=_gen(0))
    x = _batch(3, 32, n=4).requires_grad_(True)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad for {pname}"


def test_convnet3_cifar10_param_count() -> None:
    width, channels, classes, depth, side = 128, 3, 10, 3, 4
    expected = 0
    in_ch = channels
    for _ in range(depth):
        expected += in_ch * width * 9 + width  # conv 3x3 + bias
        expected += 2 * width  # GroupNorm(128, 128) affine weight + bias
        in_ch = width
    expected += width * side * side * classes + classes  # fc 2048 -> 10
    assert expected == 320_010
    net = build("convnet3", channels, classes, 32)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert isinstance(net.body.block1[1], torch.nn.GroupNorm)
    assert net.body.block1[1].num_groups == width


@pytest.mark.parametrize(("name", "dim"), [("convnet3", 2048), ("convnet4", 512)])
@pytest.mark.parametrize(("channels", "im_size"), SHAPES)
def test_convnet_embed_dim(name: str, dim: int, channels: int, im_size: int) -> None:
    net = build(name, channels, 10, im_size)
    assert net.embed_dim == dim
    with torch.no_grad():
        assert net.embed(_batch(channels, im_size)).shape == (2, dim)


def test_convnet_bn_uses_batchnorm() -> None:
    net = build("convnet3_bn", 1, 10, 28)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())


def test_registry_rejects_duplicate_and_unknown() -> None:
    before = NETS.names()
    with pytest.raises(ValueError):
        NETS.register("convnet3")(lambda c, n, s: build("mlp", c, n, s))
    assert NETS.names() == before
    with pytest.raises(ConfigError):
        build("nope", 3, 10, 32)


def test_bad_dims_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        build("convnet3", 0, 10, 32)
    with pytest.raises(ConfigError):
        build("convnet3", 3, 10, 4)  # 4 -> 2 -> 1 -> 0 px map


@pytest.mark.parametrize("name", NETS.names())
def test_generator_init_is_deterministic_and_default_like(name: str) -> None:
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a = build(name, 1, 10, 28, generator=_gen(5)).state_dict()
    b = build(name, 1, 10, 28, generator=_gen(5)).state_dict()
    c = build(name, 1, 10, 28, generator=_gen(6)).state_dict()
    torch.testing.assert_close(torch.rand(1), expected_next, rtol=0, atol=0)  # global RNG untouched
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    plain = build(name, 1, 10, 28).state_dict()  # PyTorch's own init
    for key, value in a.items():
        ref = plain[key]
        assert value.shape == ref.shape and value.dtype == ref.dtype, key
        assert torch.isfinite(value.float()).all(), key
        if not value.is_floating_point() or ref.std() == 0:  # norm affine, running stats, counters
            assert torch.equal(value, ref), key
        elif value.numel() >= 1000:  # same uniform bound as PyTorch's default init
            torch.testing.assert_close(value.abs().max(), ref.abs().max(), rtol=0.05, atol=0)


@pytest.mark.parametrize(("name", "mmac"), [("resnet10", 207), ("resnet18", 456), ("resnet10_imagenet", 15),
                                            ("resnet18_imagenet", 33)])
def test_resnet_stems_cost_and_layer2_as_dim_builds_them(name: str, mmac: int) -> None:
    """DiM's MNIST/Fashion-MNIST ResNets: 7x7 stride-2 stem + max-pool, layer2 4x4 at 28 px; the
    CIFAR-style ones keep full resolution (14x14 layer2), ~14x the multiply-accumulates."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build(name, 1, 10, 28, generator=_gen(0)).eval()
    x = _batch(1, 28, n=1)
    with FlopCounterMode(display=False) as counter:
        net(x)
    assert round(counter.get_total_flops() / 2e6) == mmac
    side = 4 if name.endswith("_imagenet") else 14
    assert net.features(x, "layer2").shape == (1, 128, side, side)
