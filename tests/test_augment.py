"""DSA: Siamese sharing, determinism, gradients, strategies and batchmode semantics."""

from __future__ import annotations

import math

import pytest
import torch

from hpcdd.augment import OPS, AugDraw, DSA, DSAParams, check_strategy, default_strategy
from hpcdd.errors import ConfigError

FULL = "color_crop_cutout_flip_scale_rotate"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 6, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=_gen(seed))


@pytest.mark.parametrize("op", OPS)
def test_same_draw_gives_same_output_and_broadcasts(op: str) -> None:
    dsa = DSA(op)
    real = _images(8)
    d = dsa.draw(1, _gen(3), batchmode=True, im_size=32)
    assert d.op == op and all(v.shape[0] == 1 for v in d.params.values())
    out_a, out_b = dsa.apply(real.clone(), d), dsa.apply(real.clone(), d)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    syn = real[:3].clone()  # a smaller "synthetic" batch shares the same transform
    out_syn = dsa.apply(syn, d)
    assert out_a.shape == real.shape and out_syn.shape == syn.shape
    torch.testing.assert_close(out_syn, out_a[:3])


def test_full_strategy_siamese_real_and_syn() -> None:
    dsa = DSA(FULL)
    g = _gen(0)
    for _ in range(12):
        d = dsa.draw(1, g, batchmode=True, im_size=28)
        real, syn = _images(10, 1, 28, seed=1), _images(4, 1, 28, seed=2)
        assert dsa.apply(real, d).shape == real.shape
        assert dsa.apply(syn, d).shape == syn.shape


def test_determinism_and_seed_dependence() -> None:
    dsa = DSA(FULL)
    x = _images()
    out1, out2 = dsa(x, _gen(7)), dsa(x, _gen(7))
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    draws = [dsa.draw(4, _gen(s), batchmode=False, im_size=32) for s in range(8)]
    assert len({d.op for d in draws}) > 1
    outs = [dsa(x, _gen(s)) for s in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_does_not_touch_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    dsa = DSA(FULL)
    g = _gen(1)
    for batchmode in (True, False):
        for _ in range(10):
            dsa(_images(seed=5), g, batchmode=batchmode)
    torch.testing.assert_close(torch.rand(1), expected, rtol=0, atol=0)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("batchmode", [True, False])
def test_gradients_flow_for_every_op(op: str, batchmode: bool) -> None:
    dsa = DSA(op)
    x = _images(4).requires_grad_(True)
    weights = torch.randn(4, 3, 32, 32, generator=_gen(9))
    (dsa(x, _gen(2), batchmode=batchmode) * weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("seed", range(3))
def test_batchmode_transforms_every_sample_alike(op: str, seed: int) -> None:
    dsa = DSA(op)
    one = _images(1, seed=seed)
    out = dsa(one.expand(5, -1, -1, -1).clone(), _gen(seed), batchmode=True)
    for i in range(1, 5):
        torch.testing.assert_close(out[i], out[0], rtol=0, atol=0)


@pytest.mark.parametrize("op", ["color", "crop", "cutout", "scale", "rotate"])
def test_per_sample_mode_differs_between_samples(op: str) -> None:
    dsa = DSA(op)
    one = _images(1)
    out = dsa(one.expand(16, -1, -1, -1).clone(), _gen(4), batchmode=False)
    assert any(not torch.allclose(out[i], out[0]) for i in range(1, 16))


def test_strategies() -> None:
    assert "flip" not in default_strategy("mnist").split("_")
    assert "flip" not in default_strategy("svhn").split("_")
    assert default_strategy("fashionmnist") == FULL
    assert default_strategy("cifar10") == FULL
    for s in (FULL, "none", "crop", default_strategy("mnist")):
        check_strategy(s)
    for bad in ("color_blur", "", "crop_crop", "None_crop"):
        with pytest.raises(ConfigError):
            check_strategy(bad)
    with pytest.raises(ConfigError):
        DSA("color_blur")
    x = _images(2)
    assert DSA("none")(x, _gen(0)) is x


def test_params_ranges() -> None:
    p = DSAParams()
    g = _gen(0)
    scale = DSA("scale").draw(4000, g, batchmode=False, im_size=32).params
    assert 1 / p.scale <= scale["sx"].min() and scale["sx"].max() <= p.scale
    angle = DSA("rotate").draw(4000, g, batchmode=False, im_size=32).params["angle"]
    assert angle.abs().max() <= math.radians(p.rotate)
    crop = DSA("crop").draw(4000, g, batchmode=False, im_size=32).params
    assert crop["tx"].abs().max() == 4 and crop["ty"].abs().max() == 4  # int(32*0.125+0.5)
    cut = DSA("cutout").draw(8, g, batchmode=False, im_size=28).params
    assert (cut["size"] == 14).all()  # int(28*0.5+0.5)


def test_crop_is_zero_filled_translation_and_paths_agree() -> None:
    dsa = DSA("crop")
    x = _images(3, size=8)
    d = AugDraw("crop", {"tx": torch.tensor([2]), "ty": torch.tensor([-1])})
    out = dsa.apply(x, d)
    ref = torch.zeros_like(x)
    ref[:, :, :6, 1:] = x[:, :, 2:, :7]  # out[i, j] = x[i + 2, j - 1]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    per_sample = AugDraw("crop", {k: v.expand(3).clone() for k, v in d.params.items()})
    torch.testing.assert_close(dsa.apply(x, per_sample), ref, rtol=0, atol=0)


def test_cutout_zeroes_a_square_and_rotate_matches_rot90() -> None:
    x = torch.ones(1, 2, 10, 10)
    d = AugDraw("cutout", {"x0": torch.tensor([2]), "y0": torch.tensor([-2]), "size": torch.tensor([5])})
    out = DSA("cutout").apply(x, d)
    assert (out[:, :, 2:7, 0:3] == 0).all() and out.sum() == 2 * (100 - 15)
    img = torch.arange(16.0).view(1, 1, 4, 4)
    rot = DSA("rotate").apply(img, AugDraw("rotate", {"angle": torch.tensor([math.pi / 2])}))
    torch.testing.assert_close(rot, torch.rot90(img, 1, (2, 3)), atol=1e-4, rtol=0)


def test_bad_param_size_rejected() -> None:
    d = DSA("scale").draw(3, _gen(0), batchmode=False, im_size=32)
    with pytest.raises(ValueError):
        DSA("scale").apply(_images(4), d)


@pytest.mark.parametrize("batchmode", [True, False])
def test_chain_applies_every_op_in_order_with_one_draw(batchmode: bool) -> None:
    """DiffAug as DiM uses it: colour, crop and cutout all applied, the draw reusable (siamese)."""
    x, y = _images(seed=1), _images(seed=2)
    chain = DSA("color_crop_cutout", chain=True)
    d = chain.draw(x.shape[0], _gen(3), batchmode=batchmode, im_size=32)
    assert d.op == "color+crop+cutout"
    expected = x
    for op in ("color", "crop", "cutout"):
        keys = {"color": ("brightness", "saturation", "contrast"), "crop": ("tx", "ty"),
                "cutout": ("x0", "y0", "size")}[op]
        expected = DSA(op).apply(expected, AugDraw(op, {k: d.params[k] for k in keys}))
    assert torch.equal(chain.apply(x, d), expected)
    assert torch.equal(chain.apply(y, d), chain.apply(y, d))
    assert DSA("none", chain=True).apply(x, DSA("none", chain=True).draw(6, _gen(0), batchmode=True, im_size=32)) is x
