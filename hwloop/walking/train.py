"""Noisy training in torch: the same sites and noise as the ONNX path, inside a torch module.

``NoisyNet`` wraps any module and numbers its sites like ``onnx_sites`` does:
the input, then the output of every leaf module in execution order (Linear,
Conv, BatchNorm, ReLU, pooling, ...), skipping pure data movement (Flatten,
Identity, Dropout); the last is the logits.  Noise is on during training and
during evaluation by separate switches.  Training is Adam with a cosine
schedule over the epochs (as in Walking Noise), one torch thread so a point
gives the same numbers on any worker.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..errors import HwloopError
from .sites import Noise, Site, draw_shape

SKIP_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
MODEL_DEFS = ("tfc", "tfc-bn", "mlp", "cnn", "lenet5", "lenet5-bn")


def torch_noise(x: torch.Tensor, noise: Noise, gen: torch.Generator) -> torch.Tensor:
    """``x`` with ``noise`` drawn from ``gen`` (differentiable in ``x``)."""
    s_add, s_mul = noise.stds()
    shape = draw_shape(tuple(x.shape), noise.correlated)
    if s_mul > 0:
        x = x * (1.0 + s_mul * torch.randn(shape, generator=gen, dtype=x.dtype))
    if s_add > 0:
        x = x + s_add * torch.randn(shape, generator=gen, dtype=x.dtype)
    return x


class NoisyNet(nn.Module):
    """``net`` with numbered noise sites; set ``noise_at`` (site -> Noise) to inject."""

    def __init__(self, net: nn.Module, in_shape: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.noise_at: dict[int, Noise] = {}
        self.train_noise = True
        self.eval_noise = True
        self.generator = torch.Generator().manual_seed(0)
        self.captured: dict[int, torch.Tensor] | None = None
        names = {m: n for n, m in net.named_modules()}
        calls: list[tuple[nn.Module, tuple[int, ...]]] = []
        leaves = [m for m in net.modules() if not list(m.children()) and not isinstance(m, SKIP_MODULES)]
        hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, tuple(o.shape[1:])))) for m in leaves]
        was_training = net.training
        try:
            net.eval()
            with torch.no_grad():
                net(torch.zeros((2,) + tuple(in_shape)))
        finally:
            net.train(was_training)
            for h in hooks:
                h.remove()
        if len({id(m) for m, _ in calls}) != len(calls):
            raise HwloopError("torch model: a module runs more than once per forward pass; "
                              "give each use its own module so sites can be numbered")
        self.sites = [Site(0, "input", "input", tuple(in_shape))]
        for k, (m, shape) in enumerate(calls, start=1):
            self.sites.append(Site(k, names[m], type(m).__name__, shape))
            m.register_forward_hook(self._hook(k))

    def _active(self) -> bool:
        return self.train_noise if self.training else self.eval_noise

    def _apply(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if k in self.noise_at and self._active():
            x = torch_noise(x, self.noise_at[k], self.generator)
        if self.captured is not None:
            self.captured[k] = x.detach()
        return x

    def _hook(self, k: int) -> Callable:
        return lambda module, inputs, output: self._apply(k, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._apply(0, x))


def build_model(name: str, n_in: int, n_classes: int, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """A model of ``exporters.models`` by short name, or ``package.module:factory``
    (called as ``factory(n_in, n_classes)``), initialised from ``seed``; returns (module, input shape)."""
    from exporters import models

    side = int(round(n_in ** 0.5))
    image = (1, side, side)
    with models.seeded(seed):
        if ":" in name:
            mod, _, attr = name.partition(":")
            try:
                factory = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as e:
                raise HwloopError(f"model definition {name!r}: {e}") from None
            return factory(n_in, n_classes), (n_in,)
        if name in ("tfc", "tfc-bn"):
            return models.TFC(batchnorm=name == "tfc-bn", in_features=n_in, n_classes=n_classes), (n_in,)
        if name == "mlp":
            return models.MLP([n_in, 64, 64, n_classes], ["relu", "relu", "linear"]), (n_in,)
        if side * side != n_in and name in ("cnn", "lenet5", "lenet5-bn"):
            raise HwloopError(f"model definition {name!r} needs square images, data has {n_in} inputs")
        if name == "cnn":
            return nn.Sequential(nn.Unflatten(1, image), models.CNN(in_shape=image, n_classes=n_classes)), (n_in,)
        if name in ("lenet5", "lenet5-bn"):
            if side != 28:
                raise HwloopError(f"model definition {name!r} needs 28x28 images, data has {side}x{side}")
            return nn.Sequential(nn.Unflatten(1, image),
                                 models.LeNet5(batchnorm=name.endswith("-bn"), n_classes=n_classes)), (n_in,)
    raise HwloopError(f"model definition {name!r}: unknown (known: {', '.join(MODEL_DEFS)}, or module:factory)")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread: reproducible numbers on any worker, and no fight over 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class TrainConfig:
    """Walking Noise's recipe: Adam, learning rate 1e-3, cosine schedule over the epochs, batch 128."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    clamp: float | None = None     # clamp weights to [-clamp, clamp] after every step


def train(net: NoisyNet, data: Dataset, config: TrainConfig, shuffle_seed: int, noise_seed: int) -> NoisyNet:
    """Train ``net`` in place with its noise settings; batch order and noise from separate seeds."""
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    y = torch.from_numpy(data.y)
    shuffle = torch.Generator().manual_seed(shuffle_seed)
    net.generator.manual_seed(noise_seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    with one_thread():
        net.train()
        for _ in range(config.epochs):
            order = torch.randperm(len(y), generator=shuffle)
            for a in range(0, len(y), config.batch_size):
                idx = order[a:a + config.batch_size]
                opt.zero_grad()
                loss = loss_fn(net(x[idx]), y[idx])
                if not torch.isfinite(loss):
                    break  # diverged under huge noise: the model stays as it is
                loss.backward()
                opt.step()
                if config.clamp is not None:
                    with torch.no_grad():
                        for m in net.modules():
                            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                                m.weight.clamp_(-config.clamp, config.clamp)
            sched.step()
        net.eval()
    return net


def evaluate(net: NoisyNet, data: Dataset, noise_at: Mapping[int, Noise], seed: int,
             capture: bool = False) -> tuple[float, dict[int, np.ndarray]]:
    """Accuracy with evaluation noise at ``noise_at`` (drawn from ``seed``);
    with ``capture`` also every site's activations."""
    old, net.noise_at = net.noise_at, dict(noise_at)
    net.generator.manual_seed(seed)
    net.captured = {} if capture else None
    acts: dict[int, list[np.ndarray]] = {}
    correct = 0
    try:
        with one_thread(), torch.no_grad():
            net.eval()
            x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
            for a in range(0, len(x), 4096):
                out = net(x[a:a + 4096])
                correct += int((out.argmax(1).numpy() == data.y[a:a + 4096]).sum())
                if capture:
                    for k, t in net.captured.items():
                        acts.setdefault(k, []).append(t.reshape(len(t), -1).numpy())
                    net.captured = {}
    finally:
        net.noise_at, net.captured = old, None
    return correct / len(data), {k: np.concatenate(v) for k, v in acts.items()}


def state_vector(net: nn.Module) -> np.ndarray:
    """Every parameter and buffer as one float64 vector (a checkpoint that needs no pickle)."""
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in net.state_dict().values()])


def load_state_vector(net: nn.Module, vec: np.ndarray) -> None:
    """Inverse of ``state_vector`` for a module of the same definition."""
    state, a = {}, 0
    for name, t in net.state_dict().items():
        state[name] = torch.from_numpy(vec[a:a + t.numel()].reshape(t.shape)).to(t.dtype)
        a += t.numel()
    if a != len(vec):
        raise HwloopError(f"checkpoint has {len(vec)} values, the model needs {a}")
    net.load_state_dict(state)
