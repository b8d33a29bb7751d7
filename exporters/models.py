"""Plain torch model definitions shared by the exporters, the tests and the Walking Noise work.

Nothing here knows about ONNX or hwloop: they are ordinary ``nn.Module``s.
Build them inside ``seeded(seed)`` to get the same initial weights every time
without touching torch's global random state.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from hwloop.layer import ACTIVATIONS


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Initialise modules from ``seed``; torch's global RNG is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def activation_module(name: str) -> nn.Module:
    """The torch module for an activation name of ``hwloop.layer.ACTIVATIONS``."""
    modules = {"linear": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
    if name not in modules:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})")
    return modules[name]()


class MLP(nn.Sequential):
    """Dense layers ``sizes[0] -> ... -> sizes[-1]``, activation ``activations[k]`` after Linear k."""

    def __init__(self, sizes: Sequence[int], activations: Sequence[str]):
        if len(activations) != len(sizes) - 1:
            raise ValueError(f"{len(sizes) - 1} layers need {len(sizes) - 1} activations, got {len(activations)}")
        mods: list[nn.Module] = []
        for n_in, n_out, act in zip(sizes[:-1], sizes[1:], activations):
            mods.append(nn.Linear(n_in, n_out))
            if act != "linear":
                mods.append(activation_module(act))
        super().__init__(*mods)


class TFC(nn.Sequential):
    """Walking Noise's MLP: Flatten, 784-64-64-64-10 with ReLU, optional BatchNorm1d after each hidden Linear."""

    def __init__(self, batchnorm: bool = False, in_features: int = 784, hidden: int = 64,
                 depth: int = 3, n_classes: int = 10):
        mods: list[nn.Module] = [nn.Flatten()]
        n = in_features
        for _ in range(depth):
            mods.append(nn.Linear(n, hidden))
            if batchnorm:
                mods.append(nn.BatchNorm1d(hidden))
            mods.append(nn.ReLU())
            n = hidden
        mods.append(nn.Linear(n, n_classes))
        super().__init__(*mods)


class CNN(nn.Sequential):
    """Small CNN: per entry of ``channels`` a block Conv3x3 (pad 1), BatchNorm2d, ReLU, MaxPool2d(2); then Flatten, Linear.

    ``pool="avg"`` pools by averaging instead (linear glue, which the analytic prediction propagates).

    ``in_shape`` (C, H, W): (1, 8, 8) for the digits, (1, 28, 28) for MNIST.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 8, 8), channels: Sequence[int] = (8, 16),
                 n_classes: int = 10, batchnorm: bool = True, pool: str = "max"):
        c, h, w = in_shape
        mods: list[nn.Module] = []
        for c_out in channels:
            mods.append(nn.Conv2d(c, c_out, kernel_size=3, padding=1))
            if batchnorm:
                mods.append(nn.BatchNorm2d(c_out))
            mods += [nn.ReLU(), nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)]
            c, h, w = c_out, h // 2, w // 2
        mods += [nn.Flatten(), nn.Linear(c * h * w, n_classes)]
        super().__init__(*mods)


class LeNet5(nn.Sequential):
    """LeNet-5 for 1x28x28 inputs (ReLU, max pooling), optional BatchNorm after each Conv/hidden Linear."""

    def __init__(self, batchnorm: bool = False, n_classes: int = 10, in_channels: int = 1):
        def bn(n: int, dim: int) -> list[nn.Module]:
            return [(nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d)(n)] if batchnorm else []

        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=2), *bn(6, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), *bn(16, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), *bn(120, 1), nn.ReLU(),
            nn.Linear(120, 84), *bn(84, 1), nn.ReLU(),
            nn.Linear(84, n_classes),
        )


class _BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 Conv+BN, a 1x1 Conv+BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.short = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                      if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class ResNet18(nn.Sequential):
    """ResNet-18 for 3x32x32 inputs (CIFAR form: 3x3 stem, no max pooling), plain torch (no torchvision)."""

    def __init__(self, n_classes: int = 10, width: int = 64):
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [_BasicBlock(c, w, 1 if i == 0 else 2), _BasicBlock(w, w, 1)]
            c = w
        super().__init__(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes))
