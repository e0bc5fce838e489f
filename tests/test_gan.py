"""DiM's conditional GAN (hpcdd.generative.nets) and the generative-distillation losses (hpcdd.generative.losses)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.generative.losses import (
    DimRecipe,
    d_loss,
    from_normalized,
    frozen,
    g_loss,
    global_logit_loss,
    gradient_penalty,
    local_feature_loss,
    to_normalized,
)
from hpcdd.generative.nets import (
    Discriminator,
    Generator,
    build_discriminator,
    build_generator,
    class_major_labels,
    generate,
    init_gan,
    sample_noise,
)

SHAPES = [(1, 28), (3, 32)]
W = 8  # tiny width keeps every test fast; the architecture is the same


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The optimisation tests run single-threaded (fast and identical on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize(("channels", "im_size"), SHAPES)
@pytest.mark.parametrize("label_mode", ["onehot", "embed"])
@pytest.mark.parametrize("head", ["acgan", "projection"])
def test_shapes_and_range(channels: int, im_size: int, label_mode: str, head: str) -> None:
    G = build_generator(10, channels, im_size, generator=_gen(0), width=W, label_mode=label_mode)
    D = build_discriminator(10, channels, im_size, generator=_gen(1), width=W, head=head)
    labels = torch.tensor([0, 3, 9, 3])
    x = G(sample_noise(4, G.nz, _gen(2)), labels)
    assert x.shape == (4, channels, im_size, im_size)
    assert x.abs().max() <= 1.0
    critic, logits = D(x, labels)
    assert critic.shape == (4,) and logits.shape == (4, 10)
    assert torch.isfinite(critic).all() and torch.isfinite(logits).all()


def test_official_layer_shapes_and_names() -> None:
    """Full-width layers as in gan_model.py, under the same names (so its checkpoints load)."""
    G28, G32 = Generator(10, 1, 28), Generator(10, 3, 32)
    assert G28.fc1.weight.shape == (196 * 16, 100)
    assert G28.conv1.kernel_size == (3, 3) and G32.conv1.kernel_size == (4, 4)
    assert isinstance(G28.conv1, nn.ConvTranspose2d) and G28.conv8.out_channels == 1
    expected_g = {"fc1", "bn0"} | {f"conv{i}" for i in range(1, 9)} | {f"bn{i}" for i in range(1, 8)}
    assert {k.split(".")[0] for k in G28.state_dict()} == expected_g
    D28, D32 = Discriminator(10, 1, 28), Discriminator(10, 3, 32)
    assert [D28.get_submodule(f"ln{i}").normalized_shape[1] for i in range(1, 9)] == [
        28,
        14,
        14,
        7,
        7,
        7,
        7,
        4,
    ]
    assert [D32.get_submodule(f"ln{i}").normalized_shape[1] for i in range(1, 9)] == [
        32,
        16,
        16,
        8,
        8,
        8,
        8,
        4,
    ]
    expected_d = {f"conv{i}" for i in range(1, 9)} | {f"ln{i}" for i in range(1, 9)} | {"fc1", "fc10"}
    assert {k.split(".")[0] for k in D28.state_dict()} == expected_d


@pytest.mark.parametrize(
    "make",
    [
        lambda: Generator(10, 1, 64),
        lambda: Discriminator(10, 3, 30),
        lambda: Generator(100, 3, 32),  # one-hot would overwrite all 100 noise dims
        lambda: Generator(10, 1, 28, label_mode="bogus"),
        lambda: Discriminator(10, 1, 28, head="bogus"),
        lambda: Generator(0, 1, 28),
        lambda: class_major_labels(10, 0),
    ],
)
def test_bad_configs_raise_config_error(make) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert "\n" not in str(info.value)


def test_embed_mode_allows_many_classes() -> None:
    G = Generator(100, 3, 32, width=W, label_mode="embed")
    assert G(torch.zeros(2, 100), torch.tensor([0, 99])).shape == (2, 3, 32, 32)


def test_onehot_overwrites_first_dims_and_keeps_z() -> None:
    G = Generator(4, 1, 28, nz=10, width=W)
    z = torch.randn(3, 10, generator=_gen(0))
    z_copy = z.clone()
    inp = G.condition(z, torch.tensor([2, 0, 3]))
    assert torch.equal(inp[:, :4], F.one_hot(torch.tensor([2, 0, 3]), 4).float())
    assert torch.equal(inp[:, 4:], z[:, 4:])
    assert torch.equal(z, z_copy)  # the caller's noise is not modified


@pytest.mark.parametrize("label_mode", ["onehot", "embed"])
def test_label_changes_output(label_mode: str) -> None:
    # train mode (batch statistics): at init the eval-mode outputs are nearly constant
    G = build_generator(10, 1, 28, generator=_gen(0), width=W, label_mode=label_mode)
    z = sample_noise(1, G.nz, _gen(1)).repeat(10, 1)  # one noise vector, ten labels
    with torch.no_grad():
        x = G(z, torch.arange(10))
    diffs = (x[1:] - x[0]).abs().flatten(1).max(1).values
    assert (diffs > 1e-2).all()


def test_projection_critic_uses_labels() -> None:
    D = build_discriminator(10, 1, 28, generator=_gen(0), width=W, head="projection")
    x = torch.randn(2, 1, 28, 28, generator=_gen(1))
    c0, logits = D(x, torch.tensor([0, 0]))
    c1, _ = D(x, torch.tensor([1, 1]))
    assert not torch.allclose(c0, c1)
    # critic = psi(h) + <e_y, h>: the label term is the class logit
    torch.testing.assert_close(c1 - c0, logits[:, 1] - logits[:, 0])
    with pytest.raises(ValueError):
        D(x)


# ---------------------------------------------------------------- initialisation and sampling


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = build_generator(10, 3, 32, generator=_gen(5), width=W).state_dict()
    b = build_generator(10, 3, 32, generator=_gen(5), width=W).state_dict()
    c = build_generator(10, 3, 32, generator=_gen(6), width=W).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])


@pytest.mark.parametrize("cls", [Generator, Discriminator])
def test_init_gan_matches_pytorch_default_init(cls) -> None:
    """Same seed, same draws, same order: init_gan reproduces PyTorch's own initialisation."""
    with torch.random.fork_rng():
        torch.manual_seed(11)
        reference = cls(10, 1, 28, width=W).state_dict()
    ours = (build_generator if cls is Generator else build_discriminator)(
        10, 1, 28, generator=_gen(11), width=W
    )
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


def test_init_gan_handles_embedding_and_refuses_unknown() -> None:
    emb = nn.Embedding(5, 3, padding_idx=0)
    init_gan(emb, _gen(0))
    assert emb.weight[0].abs().sum() == 0 and emb.weight[1:].std() > 0.3
    with pytest.raises(TypeError):
        init_gan(nn.Sequential(nn.PReLU()), _gen(0))


def test_generate_deterministic_batch_independent_and_no_grad() -> None:
    G = build_generator(3, 1, 28, generator=_gen(0), width=W)
    G.train()
    labels = class_major_labels(3, 4)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    a = generate(G, labels, _gen(7), batch=5)
    b = generate(G, labels, _gen(7), batch=100)
    c = generate(G, labels, _gen(8), batch=100)
    assert a.shape == (12, 1, 28, 28) and not a.requires_grad
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert G.training  # mode restored
    assert a.abs().max() <= 1.0


# ---------------------------------------------------------------- losses: hand-computed values


class LinearCritic(nn.Module):
    """critic(x) = <w, x>, logits(x) = x_flat @ M (a toy D with known gradients)."""

    def __init__(self, w: torch.Tensor, classes: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.m = nn.Parameter(torch.zeros(w.numel(), classes))

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(1)
        return flat @ self.w.flatten(), flat @ self.m


def _unit(shape: tuple[int, ...], norm: float, seed: int = 0) -> torch.Tensor:
    w = torch.randn(shape, generator=_gen(seed))
    return w / w.norm() * norm


@pytest.mark.parametrize(("norm", "expected"), [(1.0, 0.0), (3.0, 4.0), (0.5, 0.25)])
def test_gradient_penalty_of_linear_critic(norm: float, expected: float) -> None:
    """||grad c|| = ||w|| everywhere, so GP = (||w|| - 1)^2 whatever the interpolation."""
    D = LinearCritic(_unit((1, 4, 4), norm))
    real, fake = torch.randn(5, 1, 4, 4, generator=_gen(1)), torch.randn(5, 1, 4, 4, generator=_gen(2))
    gp = gradient_penalty(D, real, fake, _gen(3))
    assert gp.item() == pytest.approx(expected, abs=1e-5)
    gp.backward()  # differentiable in D: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(D.w.grad, 2 * (norm - 1) * D.w.detach() / norm)


def test_gradient_penalty_interpolates_with_the_given_generator() -> None:
    """A quadratic critic c(x) = ||x||^2 / 2 has grad x_hat, so GP reveals the alpha drawn."""

    class Quadratic(nn.Module):
        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
            return 0.5 * x.flatten(1).square().sum(1), torch.zeros(len(x), 2)

    real, fake = torch.ones(4, 1, 2, 2), torch.zeros(4, 1, 2, 2)  # x_hat = alpha * 1, ||x_hat|| = 2 alpha
    alpha = torch.rand(4, generator=_gen(9))
    expected = (2 * alpha - 1).square().mean()
    gp = gradient_penalty(Quadratic(), real, fake, _gen(9))
    assert gp.item() == pytest.approx(expected.item(), abs=1e-6)


def test_d_loss_and_g_loss_match_hand_computation() -> None:
    K, lam, aux = 3, 10.0, 0.5
    D = LinearCritic(_unit((1, 4, 4), 2.0), classes=K)  # logits all zero -> CE = log K
    real = torch.randn(6, 1, 4, 4, generator=_gen(1))
    fake = torch.randn(6, 1, 4, 4, generator=_gen(2))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    w = D.w.detach().flatten()
    wass = (real.flatten(1) @ w).mean() - (fake.flatten(1) @ w).mean()
    loss, m = d_loss(D, real, fake, labels, gp_lambda=lam, aux_weight=aux, generator=_gen(3))
    expected = -wass + lam * (2.0 - 1) ** 2 + aux * 2 * math.log(K)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert m["wasserstein"] == pytest.approx(wass.item(), abs=1e-6)
    assert m["gp"] == pytest.approx(1.0, abs=1e-5)
    assert m["d_aux_real"] == pytest.approx(math.log(K), abs=1e-6)
    no_fake_aux, _ = d_loss(
        D, real, fake, labels, gp_lambda=lam, aux_weight=aux, generator=_gen(3), fake_aux=False
    )
    assert (loss - no_fake_aux).item() == pytest.approx(aux * math.log(K), abs=1e-5)

    gl, gm = g_loss(D, fake, labels, aux_weight=aux)
    assert gl.item() == pytest.approx(-(fake.flatten(1) @ w).mean().item() + aux * math.log(K), abs=1e-5)
    assert gm["g_aux"] == pytest.approx(math.log(K), abs=1e-6)


def test_global_logit_loss_hand_value() -> None:
    real = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # log_softmax = [-ln2, -ln2] for both rows
    fake = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # row 0: [ln .75, ln .25]; row 1: [-ln2, -ln2]
    ln2 = math.log(2.0)
    expected = ((math.log(0.75) + ln2) ** 2 + (math.log(0.25) + ln2) ** 2) / 4
    assert global_logit_loss(real, fake).item() == pytest.approx(expected, abs=1e-6)
    # invariant to a per-row shift of the logits (it compares log-probabilities)
    assert global_logit_loss(real + 5.0, fake - 2.0).item() == pytest.approx(expected, abs=1e-5)
    # paired per sample (not batch means): zero only when row i matches row i
    assert global_logit_loss(fake.flip(0), fake.flip(0)).item() == 0.0
    assert global_logit_loss(fake.flip(0), fake).item() > 0.1


def test_matching_losses_send_gradients_only_to_the_fake_side() -> None:
    real = torch.randn(4, 5, generator=_gen(0), requires_grad=True)
    fake = torch.randn(4, 5, generator=_gen(1), requires_grad=True)
    (global_logit_loss(real, fake) + local_feature_loss(real, fake)).backward()
    assert real.grad is None and fake.grad is not None and fake.grad.abs().sum() > 0


def test_local_feature_loss_paired_and_class_mean() -> None:
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [10.0, 10.0]])
    fake = torch.tensor([[3.0, 4.0], [1.0, 2.0], [1.0, 1.0], [10.0, 10.0]])
    labels = torch.tensor([0, 0, 1, 2])
    # paired: mean over all 8 elements of squared differences
    paired = (4 + 4 + 4 + 4 + 1 + 1 + 0 + 0) / 8
    assert local_feature_loss(real, fake).item() == pytest.approx(paired)
    # class means: class 0 identical ([2, 3] both), class 1 differs by 1 per dim, class 2 identical
    assert local_feature_loss(real, fake, pairing="class_mean", labels=labels).item() == pytest.approx(2 / 6)
    feats = torch.randn(4, 3, 2, 2, generator=_gen(0))  # feature maps are flattened per sample
    assert local_feature_loss(
        feats, feats + 1.0, pairing="class_mean", labels=labels
    ).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        local_feature_loss(real, fake, pairing="class_mean")


def test_normalisation_maps() -> None:
    mean, std = (0.2860,), (0.3530,)
    x = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1)
    y = to_normalized(x, mean, std)
    torch.testing.assert_close(
        y.flatten(), torch.tensor([(0 - 0.286) / 0.353, (0.5 - 0.286) / 0.353, (1 - 0.286) / 0.353])
    )
    rgb = torch.rand(2, 3, 4, 4, generator=_gen(0)) * 2 - 1
    m3, s3 = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    torch.testing.assert_close(from_normalized(to_normalized(rgb, m3, s3), m3, s3), rgb)
    # channel c uses mean[c] / std[c]
    torch.testing.assert_close(to_normalized(rgb, m3, s3)[:, 2], ((rgb[:, 2] + 1) / 2 - 0.4465) / 0.2010)


# ---------------------------------------------------------------- gradient routing


def test_d_loss_trains_only_d_and_g_loss_under_frozen_only_g() -> None:
    G = build_generator(3, 1, 28, generator=_gen(0), width=W)
    D = build_discriminator(3, 1, 28, generator=_gen(1), width=W)
    labels = torch.tensor([0, 1, 2, 1])
    real = torch.rand(4, 1, 28, 28, generator=_gen(2)) * 2 - 1
    fake = G(sample_noise(4, G.nz, _gen(3)), labels)  # with a graph back to G
    loss, metrics = d_loss(D, real, fake, labels, gp_lambda=10.0, aux_weight=1.0, generator=_gen(4))
    assert all(math.isfinite(v) for v in metrics.values())
    loss.backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is not None for p in D.parameters())
    assert sum(p.grad.abs().sum() for p in D.parameters()) > 0

    D.zero_grad(set_to_none=True)
    with frozen(D):
        loss, metrics = g_loss(D, G(sample_noise(4, G.nz, _gen(5)), labels), labels, aux_weight=1.0)
        loss.backward()
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(p.grad is None for p in D.parameters())
    assert all(p.requires_grad for p in D.parameters())  # restored
    grads = [p.grad for p in G.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------- learning on a toy problem


def _halves(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: left half bright; class 1: right half bright; in [-1, 1] with a little noise."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.full((n, 1, 28, 28), -0.8)
    x[y == 0, :, :, :14] = 0.8
    x[y == 1, :, :, 14:] = 0.8
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1), y


def test_critic_learns_wasserstein_gap_and_classes(one_thread) -> None:
    g = _gen(0)
    G = build_generator(2, 1, 28, generator=g, width=W, nz=16)
    D = build_discriminator(2, 1, 28, generator=g, width=W)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=DimRecipe.betas)
    history = []
    for _ in range(30):
        real, labels = _halves(32, g)
        fake_labels = torch.randint(0, 2, (32,), generator=g)
        with torch.no_grad():
            fake = G(sample_noise(32, 16, g), fake_labels)
        loss, metrics = d_loss(
            D, real, fake, labels, gp_lambda=10.0, aux_weight=1.0, generator=g, fake_labels=fake_labels
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics)
    first, last = history[0], history[-1]
    assert last["wasserstein"] > first["wasserstein"] + 1.0
    assert last["d_aux_real"] < first["d_aux_real"] and last["d_acc_real"] >= 0.9
    assert last["d_loss"] < first["d_loss"]


class _HalvesClassifier(nn.Module):
    """A fixed critic whose class logits say which half of the image is brighter."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        d = x[..., :14].mean((1, 2, 3)) - x[..., 14:].mean((1, 2, 3))
        return torch.zeros(len(x)), torch.stack([4 * d, -4 * d], 1)


@pytest.mark.parametrize("label_mode", ["onehot", "embed"])
def test_generator_learns_label_conditioning(label_mode: str, one_thread) -> None:
    g = _gen(0)
    G = build_generator(2, 1, 28, generator=g, width=W, nz=16, label_mode=label_mode)
    D = _HalvesClassifier()
    opt = torch.optim.Adam(G.parameters(), lr=2e-3, betas=DimRecipe.betas)
    history = []
    for _ in range(40):
        labels = torch.randint(0, 2, (32,), generator=g)
        loss, metrics = g_loss(D, G(sample_noise(32, 16, g), labels), labels, aux_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(metrics["g_aux"])
    assert history[-1] < 0.5 * history[0]
    labels = class_major_labels(2, 64)
    x = generate(G, labels, _gen(99))  # eval mode: BatchNorm running statistics
    left_brighter = x[..., :14].mean((1, 2, 3)) > x[..., 14:].mean((1, 2, 3))
    assert (left_brighter == (labels == 0)).float().mean() >= 0.9
