"""The conditional WGAN-GP/ACGAN generator and discriminator of DiM (Wang et al., 2023).

Architecture as in the official ``vimar-gu/DiM`` code (``gan_model.py``, itself derived
from ``richardkxu/GANs-on-CIFAR10``); parameter names follow that file, so its
checkpoints load with ``load_state_dict`` (one-hot generator, ACGAN head).

Generator (``w`` = width = 196)::

    z (nz=100, N(0,1); the first num_classes dims overwritten by the one-hot label)
    fc1: Linear(nz, w*4*4) -> bn0: BatchNorm1d -> ReLU -> view (w, 4, 4)
    conv1: ConvTranspose(k3 for 28x28 | k4 for 32x32, s2, p1)  4 -> 7 | 8, BN, ReLU
    conv2..conv4: Conv3x3, BN, ReLU
    conv5: ConvTranspose(k4, s2, p1) -> 14 | 16, BN, ReLU
    conv6: Conv3x3, BN, ReLU
    conv7: ConvTranspose(k4, s2, p1) -> 28 | 32, BN, ReLU
    conv8: Conv3x3 -> channels, tanh (no BN/ReLU)

Discriminator::

    conv1 (s1), conv2 (s2), conv3 (s1), conv4 (s2), conv5..7 (s1), conv8 (s2): Conv3x3 with
    w channels, each followed by LayerNorm over (w, H, W) (elementwise affine) and
    LeakyReLU (PyTorch default slope 0.01); 28 -> 28,14,14,7,7,7,7,4 | 32 -> 32,16,16,8,8,8,8,4
    MaxPool 4x4 -> w features; fc1: Linear(w, 1) critic; fc10: Linear(w, classes) ACGAN head

Deviations from the official code (deliberate):

- ``fc10`` has ``num_classes`` outputs (hard-coded 10 there); the name is kept for checkpoints.
- The critic is returned with shape ``(B,)`` (``(B, 1)`` there).
- ``label_mode='onehot'`` refuses ``num_classes >= nz`` (with 100 classes and nz=100 the
  official recipe would leave no noise at all); ``label_mode='embed'`` keeps all nz noise dims
  and concatenates a learned label embedding (a bias-free Linear on the one-hot) instead.
- ``head='projection'`` (Miyato & Koyama, 2018) is an option: the critic becomes
  ``fc1(h) + <e_y, h>`` with ``e_y`` the rows of a bias-free ``fc10``, whose outputs
  ``<e_c, h>`` are also returned as class logits.
- Weights are drawn from an explicit ``torch.Generator`` (:func:`init_gan`), with PyTorch's
  default init distributions; the official code uses the global RNG.
- Only 28x28 and 32x32 inputs are supported (the sizes the official code handles); other
  sizes raise ``ConfigError``.
- :func:`generate` runs the generator in eval mode (BatchNorm running statistics), as the
  official validation does, and draws all noise on the CPU generator before batching, so
  the images do not depend on the batch size or the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from hpcdd.errors import ConfigError
from hpcdd.nets.base import init_weights
from hpcdd.specs.generative import GAN_SIZES as SUPPORTED_SIZES
from hpcdd.specs.generative import HEADS, LABEL_MODES


def _check(name: str, num_classes: int, channels: int, im_size: int, width: int) -> None:
    for label, value in (("num_classes", num_classes), ("channels", channels), ("width", width)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name}: {label} must be a positive integer, got {value!r}")
    if im_size not in SUPPORTED_SIZES:
        raise ConfigError(f"{name}: image size {im_size} is not supported; the DiM GAN handles 28 or 32")


class Generator(nn.Module):
    """DiM's conditional generator: ``forward(z, labels)`` -> images in [-1, 1], ``(B, C, H, W)``."""

    def __init__(
        self,
        num_classes: int,
        channels: int,
        im_size: int,
        *,
        nz: int = 100,
        width: int = 196,
        label_mode: str = "onehot",
        embed_dim: int = 64,
    ) -> None:
        super().__init__()
        _check("Generator", num_classes, channels, im_size, width)
        if label_mode not in LABEL_MODES:
            raise ConfigError(
                f"Generator: label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}"
            )
        if label_mode == "onehot" and nz <= num_classes:
            raise ConfigError(
                f"Generator: one-hot labels need nz > num_classes ({nz} <= {num_classes}); "
                "raise nz or use label_mode=embed"
            )
        if label_mode == "embed" and (nz < 1 or embed_dim < 1):
            raise ConfigError(f"Generator: nz and embed_dim must be >= 1, got {nz}, {embed_dim}")
        self.num_classes, self.channels, self.im_size = num_classes, channels, im_size
        self.nz, self.width, self.label_mode = nz, width, label_mode
        w = width
        in_dim = nz
        if label_mode == "embed":
            self.label_embed = nn.Linear(num_classes, embed_dim, bias=False)
            in_dim = nz + embed_dim
        self.fc1 = nn.Linear(in_dim, w * 4 * 4)
        self.bn0 = nn.BatchNorm1d(w * 4 * 4)
        first_kernel = 3 if im_size == 28 else 4  # 4 -> 7 (28x28) or 4 -> 8 (32x32)
        self.conv1 = nn.ConvTranspose2d(w, w, kernel_size=first_kernel, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(w)
        self.conv4 = nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1)
        self.bn4 = nn.BatchNorm2d(w)
        self.conv5 = nn.ConvTranspose2d(w, w, kernel_size=4, stride=2, padding=1)
        self.bn5 = nn.BatchNorm2d(w)
        self.conv6 = nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1)
        self.bn6 = nn.BatchNorm2d(w)
        self.conv7 = nn.ConvTranspose2d(w, w, kernel_size=4, stride=2, padding=1)
        self.bn7 = nn.BatchNorm2d(w)
        self.conv8 = nn.Conv2d(w, channels, kernel_size=3, stride=1, padding=1)

    def condition(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fc1 input: ``z`` with the label written in (onehot) or appended (embed); ``z`` is kept."""
        if z.dim() != 2 or z.shape[1] != self.nz or labels.shape != (z.shape[0],):
            raise ValueError(
                f"expected z (B, {self.nz}) and labels (B,), got {tuple(z.shape)}, {tuple(labels.shape)}"
            )
        onehot = F.one_hot(labels.long(), self.num_classes).to(z.dtype)
        if self.label_mode == "onehot":
            return torch.cat([onehot, z[:, self.num_classes :]], dim=1)
        return torch.cat([z, self.label_embed(onehot)], dim=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.fc1(self.condition(z, labels))))
        x = x.view(-1, self.width, 4, 4)
        for conv, bn in self._blocks():
            x = F.relu(bn(conv(x)))
        return torch.tanh(self.conv8(x))

    def _blocks(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        for i in range(1, 8):
            yield getattr(self, f"conv{i}"), getattr(self, f"bn{i}")


class Discriminator(nn.Module):
    """DiM's critic: ``forward(x, labels=None)`` -> ``(critic (B,), class_logits (B, num_classes))``.

    ``labels`` are required (and used) only by the projection head.
    """

    _STRIDES = (1, 2, 1, 2, 1, 1, 1, 2)

    def __init__(
        self,
        num_classes: int,
        channels: int,
        im_size: int,
        *,
        width: int = 196,
        head: str = "acgan",
    ) -> None:
        super().__init__()
        _check("Discriminator", num_classes, channels, im_size, width)
        if head not in HEADS:
            raise ConfigError(f"Discriminator: head must be one of {', '.join(HEADS)}, got {head!r}")
        self.num_classes, self.channels, self.im_size = num_classes, channels, im_size
        self.width, self.head = width, head
        side, in_ch = im_size, channels
        for i, stride in enumerate(self._STRIDES, start=1):
            side = math.ceil(side / stride)  # k3 p1: ceil(n / stride)
            self.add_module(f"conv{i}", nn.Conv2d(in_ch, width, kernel_size=3, stride=stride, padding=1))
            self.add_module(f"ln{i}", nn.LayerNorm([width, side, side]))
            in_ch = width
        assert side == 4, side  # 28 and 32 both end at 4x4, pooled to 1x1
        self.fc1 = nn.Linear(width, 1)
        self.fc10 = nn.Linear(width, num_classes, bias=head == "acgan")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(B, width)`` features shared by both heads."""
        for i in range(1, len(self._STRIDES) + 1):
            x = getattr(self, f"conv{i}")(x)
            x = F.leaky_relu(getattr(self, f"ln{i}")(x))  # nn.LeakyReLU() default slope 0.01
        return F.max_pool2d(x, kernel_size=4, stride=4).flatten(1)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        critic = self.fc1(h).squeeze(1)
        logits = self.fc10(h)
        if self.head == "projection":
            if labels is None:
                raise ValueError("the projection discriminator needs labels")
            critic = critic + logits.gather(1, labels.long().view(-1, 1)).squeeze(1)
        return critic, logits


def init_gan(net: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise ``net`` in place like PyTorch's defaults, drawing only from ``generator``.

    :func:`hpcdd.nets.base.init_weights` for the modules it knows, plus ConvTranspose2d
    (kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in)), fan_in = weight[0].numel()
    exactly as ``reset_parameters`` computes it) and Embedding (N(0, 1), padding row zero).
    Modules are visited in ``net.modules()`` order, the order PyTorch's own init draws in.
    A module owning parameters and also having children raises ``TypeError``.
    """
    with torch.no_grad():
        for module in net.modules():
            if not any(True for _ in module.parameters(recurse=False)):
                continue
            if any(True for _ in module.children()):
                raise TypeError(
                    f"init_gan cannot initialise {type(module).__name__}: it owns parameters and has children"
                )
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, generator=generator)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            else:
                init_weights(module, generator)


_M = TypeVar("_M", bound=nn.Module)


def _materialize(net: _M, generator: torch.Generator) -> _M:
    """Give a meta-device ``net`` CPU storage and draw its weights from ``generator``."""
    net.to_empty(device="cpu")
    init_gan(net, generator)
    return net


def build_generator(
    num_classes: int, channels: int, im_size: int, *, generator: torch.Generator | None = None, **kwargs
) -> Generator:
    """A :class:`Generator` whose weights come only from ``generator`` (CPU) when given."""
    if generator is None:
        return Generator(num_classes, channels, im_size, **kwargs)
    with torch.device("meta"):  # no storage, no global-RNG draws
        net = Generator(num_classes, channels, im_size, **kwargs)
    return _materialize(net, generator)


def build_discriminator(
    num_classes: int, channels: int, im_size: int, *, generator: torch.Generator | None = None, **kwargs
) -> Discriminator:
    """A :class:`Discriminator` whose weights come only from ``generator`` (CPU) when given."""
    if generator is None:
        return Discriminator(num_classes, channels, im_size, **kwargs)
    with torch.device("meta"):
        net = Discriminator(num_classes, channels, im_size, **kwargs)
    return _materialize(net, generator)


def sample_noise(n: int, nz: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, nz)`` standard-normal noise (``torch.normal(0, 1, ...)`` in DiM) on the generator's device."""
    return torch.randn(n, nz, generator=generator, device=generator.device)


def class_major_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """``[0]*ipc + [1]*ipc + ...``: int64 labels, ``ipc`` per class, class-major."""
    if num_classes < 1 or ipc < 1:
        raise ConfigError(f"need num_classes >= 1 and ipc >= 1, got {num_classes}, {ipc}")
    return torch.arange(num_classes).repeat_interleave(ipc)


@torch.no_grad()
def generate(
    G: Generator, labels: torch.Tensor, generator: torch.Generator, *, batch: int = 256
) -> torch.Tensor:
    """Images in [-1, 1] for ``labels`` (one per label), on ``G``'s device, without gradients.

    All noise is drawn first from ``generator`` (a CPU generator), so the result depends only
    on the generator's state, the weights and the labels: not on ``batch`` or the device.
    ``G`` runs in eval mode (BatchNorm running statistics); its mode is restored afterwards.
    """
    if batch < 1:
        raise ConfigError(f"generate: batch must be >= 1, got {batch}")
    device = next(G.parameters()).device
    noise = sample_noise(len(labels), G.nz, generator)
    was_training = G.training
    G.eval()
    try:
        chunks = [
            G(noise[i : i + batch].to(device), labels[i : i + batch].to(device))
            for i in range(0, len(labels), batch)
        ]
    finally:
        G.train(was_training)
    if not chunks:
        return torch.empty(0, G.channels, G.im_size, G.im_size, device=device)
    return torch.cat(chunks)
