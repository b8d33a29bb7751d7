"""Recurrent layers (ONNX LSTM, GRU, RNN): the products on the device, the cell arithmetic on the host.

An ONNX recurrent node becomes two analog layers: the input product W x_t
for every time step at once (it does not depend on the state, so it is an
ordinary per-token layer), and the recurrent product R h_{t-1}, run on its
device once per time step, so noise enters every step and is carried by the
state as on hardware (Semenova et al. 2019 for recurrent networks).  The gate
nonlinearities and the cell-state arithmetic run here with ONNX's semantics
(gate orders iofc for LSTM, zrh for GRU with linear_before_reset=1).  A
bidirectional node's two directions run as the two groups of one grouped
product (no zero blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .activations import activate

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: ONNX activation names a recurrent node may use, as hwloop activations
ONNX_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}


@dataclass
class RecurrentSpec:
    """How the host runs the cell around the device's recurrent product."""

    op: str                          # LSTM | GRU | RNN
    hidden: int
    directions: int                  # 1, or 2 (bidirectional: direction 1 runs backwards in time)
    activations: tuple[str, ...]     # per direction: f, g, h (LSTM), f, g (GRU), f (RNN), hwloop names
    clip: float | None = None
    extra_outputs: tuple[str, str] = ("", "")   # ONNX Y_h and Y_c tensors (empty when unused)
    initial: tuple | None = None     # constant (initial_h, initial_c) arrays (D, 1 or B, H), or None: zeros


def run_recurrent(spec: RecurrentSpec, xw: np.ndarray, r: int, batch: int, repeats: int,
                  product: Callable[[np.ndarray, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the sequence: ``xw`` (T, r*B, D*G*H) are the input products; ``product(h (r_h, B, D*H), step)``
    is the device's recurrent product (R, B, D*G*H).  Returns Y (T, R, B, D, H) and the final h, c
    (R, B, D, H)."""
    t_len, d, hid = xw.shape[0], spec.directions, spec.hidden
    g = GATES[spec.op]
    x = xw.reshape(t_len, r, batch, d, g * hid)
    h = np.zeros((1, batch, d, hid), np.float32)
    c = np.zeros_like(h)
    if spec.initial is not None:
        h = np.broadcast_to(np.moveaxis(spec.initial[0], 0, 1)[None], (1, batch, d, hid)).astype(np.float32)
        if spec.initial[1] is not None:
            c = np.broadcast_to(np.moveaxis(spec.initial[1], 0, 1)[None], (1, batch, d, hid)).astype(np.float32)
    y = np.empty((t_len, repeats, batch, d, hid), np.float32)
    for s in range(t_len):
        times = [s, t_len - 1 - s][:d]
        rh = np.asarray(product(np.ascontiguousarray(h).reshape(h.shape[0], batch, d * hid), s), np.float32)
        rh = rh.reshape(repeats, batch, d, g * hid)
        xs = np.stack([x[times[k], :, :, k] for k in range(d)], axis=2)   # (r, B, D, G*H)
        h, c = _cell(spec, xs, rh, h, c)
        for k in range(d):
            y[times[k], :, :, k] = h[:, :, k]
    return y, np.broadcast_to(h, (repeats,) + h.shape[1:]), np.broadcast_to(c, (repeats,) + c.shape[1:])


def _act(spec: RecurrentSpec, k: int, a: np.ndarray) -> np.ndarray:
    """Activation k of the cell (per direction), after the node's clip."""
    if spec.clip is not None:
        a = np.clip(a, -spec.clip, spec.clip)
    per = len(spec.activations) // spec.directions
    names = [spec.activations[d * per + k] for d in range(spec.directions)]
    if len(set(names)) == 1:
        return activate(names[0], np.array(a, np.float32))
    return np.stack([activate(n, np.array(a[:, :, d], np.float32)) for d, n in enumerate(names)], axis=2)


def _cell(spec: RecurrentSpec, xs: np.ndarray, rh: np.ndarray, h: np.ndarray, c: np.ndarray):
    hid = spec.hidden
    split = lambda z, k: z[..., k * hid:(k + 1) * hid]  # noqa: E731
    if spec.op == "RNN":
        return _act(spec, 0, xs + rh), c
    if spec.op == "GRU":   # linear_before_reset=1: h~ = g(W_h x + r * (R_h h + Rb_h))
        z = _act(spec, 0, split(xs, 0) + split(rh, 0))
        rr = _act(spec, 0, split(xs, 1) + split(rh, 1))
        cand = _act(spec, 1, split(xs, 2) + rr * split(rh, 2))
        return (1 - z) * cand + z * h, c
    pre = xs + rh       # LSTM, gate order i, o, f, c
    i, o, f = (_act(spec, 0, split(pre, k)) for k in range(3))
    c = f * c + i * _act(spec, 1, split(pre, 3))
    return o * _act(spec, 2, c), c
