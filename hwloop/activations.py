"""The activations a product's neurons may apply, with ONNX's semantics and their slopes.

One table, because four places need the same definitions: the importer
recognises them after a product, the emulator applies them, the analytic
prediction linearises through them (their slope), and the bench driver applies
them on the host when a chip's neurons lack them.  Parameters (LeakyRelu's
alpha, PRelu's per-neuron slope, Clip's bounds, ...) travel in a dict beside
the name; a per-neuron array applies along the last axis (the neurons).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np


class _Torch:
    """torch, imported on first use: ``hwloop.layer`` (and so the CLI's parser) must not pay for it."""

    def __getattr__(self, name: str):
        import torch as _torch

        return getattr(_torch, name)


torch = _Torch()

#: activations that chips and transfer functions know (``hwloop.layer.ACTIVATIONS``)
BASIC = ("linear", "sigmoid", "tanh", "relu")


def _p(params: Mapping, key: str, t: torch.Tensor):
    v = params[key]
    return torch.as_tensor(np.asarray(v), dtype=t.dtype) if np.ndim(v) else float(v)


def _sig(t):
    return torch.sigmoid(t)


def _gelu_tanh_inner(t):
    return math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3)


_Fn = Callable[["torch.Tensor", Mapping], "torch.Tensor"]

#: name -> (f(a), f'(a)), both on torch tensors
TABLE: dict[str, tuple[_Fn, _Fn]] = {
    "linear": (lambda t, p: t, lambda t, p: torch.ones_like(t)),
    "relu": (lambda t, p: torch.relu(t), lambda t, p: (t > 0).to(t.dtype)),
    "sigmoid": (lambda t, p: _sig(t), lambda t, p: _sig(t) * (1 - _sig(t))),
    "tanh": (lambda t, p: torch.tanh(t), lambda t, p: 1 - torch.tanh(t) ** 2),
    "leaky_relu": (lambda t, p: torch.where(t < 0, _p(p, "alpha", t) * t, t),
                   lambda t, p: torch.where(t < 0, _p(p, "alpha", t) * torch.ones_like(t), torch.ones_like(t))),
    "prelu": (lambda t, p: torch.where(t < 0, _p(p, "slope", t) * t, t),
              lambda t, p: torch.where(t < 0, _p(p, "slope", t) * torch.ones_like(t), torch.ones_like(t))),
    "elu": (lambda t, p: torch.where(t < 0, _p(p, "alpha", t) * torch.expm1(t), t),
            lambda t, p: torch.where(t < 0, _p(p, "alpha", t) * torch.exp(t), torch.ones_like(t))),
    "gelu": (lambda t, p: torch.nn.functional.gelu(t),
             lambda t, p: torch.special.ndtr(t) + t * torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (lambda t, p: torch.nn.functional.gelu(t, approximate="tanh"),
                  lambda t, p: 0.5 * (1 + torch.tanh(_gelu_tanh_inner(t))) + 0.5 * t
                  * (1 - torch.tanh(_gelu_tanh_inner(t)) ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * t * t)),
    "silu": (lambda t, p: torch.nn.functional.silu(t), lambda t, p: _sig(t) * (1 + t * (1 - _sig(t)))),
    "softplus": (lambda t, p: torch.where(t > 30, t, torch.log1p(torch.exp(torch.clamp(t, max=30)))),
                 lambda t, p: _sig(t)),
    "hard_sigmoid": (lambda t, p: torch.clamp(_p(p, "alpha", t) * t + _p(p, "beta", t), 0, 1),
                     lambda t, p: torch.where((_p(p, "alpha", t) * t + _p(p, "beta", t) > 0)
                                              & (_p(p, "alpha", t) * t + _p(p, "beta", t) < 1),
                                              _p(p, "alpha", t) * torch.ones_like(t), torch.zeros_like(t))),
    "hard_swish": (lambda t, p: t * torch.clamp(t / 6 + 0.5, 0, 1),
                   lambda t, p: torch.where(t < -3, torch.zeros_like(t),
                                            torch.where(t > 3, torch.ones_like(t), t / 3 + 0.5))),
    "clip": (lambda t, p: torch.clamp(t, _p(p, "min", t), _p(p, "max", t)),
             lambda t, p: ((t > _p(p, "min", t)) & (t < _p(p, "max", t))).to(t.dtype)),
}

#: every activation an analog layer may carry
NAMES = tuple(TABLE)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))


def activate(name: str, a: np.ndarray, params: Mapping | None = None) -> np.ndarray:
    """``name``'s activation on a numpy array, in ``a``'s dtype.

    relu and sigmoid work in place when ``a`` is writable (no second large
    array); pass a copy to keep ``a``.
    """
    if name == "linear":
        return a
    if name == "relu":
        return np.maximum(a, 0, out=a) if a.flags.writeable else np.maximum(a, 0)
    if name == "sigmoid":   # torch's kernel: stable for large |a| and ~20x faster than sign-split numpy
        return _tensor(a).sigmoid_().numpy()
    if name == "tanh":
        return np.tanh(a)
    if name not in TABLE:
        raise ValueError(f"unknown activation {name!r}")
    return TABLE[name][0](_tensor(a), params or {}).numpy()


def slope(name: str, a: np.ndarray, params: Mapping | None = None) -> np.ndarray:
    """d act / d a at pre-activation ``a`` (the analytic noise prediction's linearisation)."""
    if name not in TABLE:
        raise ValueError(f"unknown activation {name!r}")
    return TABLE[name][1](_tensor(np.asarray(a)), params or {}).numpy()


def describe(name: str, params: Mapping | None = None) -> str:
    """``name`` with its scalar parameters, for tables: ``leaky_relu(alpha=0.1)``."""
    scalars = [f"{k}={float(v):g}" for k, v in (params or {}).items() if np.ndim(v) == 0]
    return f"{name}({', '.join(scalars)})" if scalars else name
