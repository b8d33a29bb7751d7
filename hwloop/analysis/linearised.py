"""First-order prediction for any model ``hwloop run`` executes: transformers, recurrent layers, max pooling.

The exact propagation (``propagate``) needs a chain of dense layers with
linear glue between them.  Attention, LayerNorm, residual branches, max
pooling and the cell arithmetic of an LSTM are none of these, so for such
models the covariance of every recorded layer is taken to first order in the
noise around the noise-free operating point:

    C_m = sum over device calls c of  J_mc S_c J_mc^T

where a device call is one product of one layer (one time step of a
recurrent layer: its noise is fresh every step), S_c the covariance of the
noise it adds (the profile's terms at the call's noise-free values: per
neuron, plus the correlated terms shared by the neurons of one device row,
i.e. one token, one position or one time step, within a column tile) and
J_mc the Jacobian of layer m's recorded output with respect to that call's
output.  J is measured by central differences through the runner's own walk
over the model's steps (``hwloop.forward.forward``), with ideal devices and the
perturbations carried as repetitions, so the glue is exactly what a run
executes.  Stated approximations: the glue is linearised at the clean point
(attention weights and LayerNorm statistics move with the noise only to
first order; MaxPool passes the noise of its arg-max element, an exact tie
shares it), the multiplicative terms use the clean value (no E[x x^T] = x x^T
+ P refinement) and the ADC range's clipping is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..devices import Emulator
from ..layer import AnalogLayer
from ..lowering import im2col, on_device
from .noise import LayerNoise
from .propagate import common_mode

#: perturbation size relative to the RMS of the call's clean output
_STEP = 1e-3
#: float32 values in one perturbed pass (repetitions x samples x widest step)
_BUDGET = 1 << 23

APPROXIMATION = ("linearised (first order around the noise-free point: glue linearised, MaxPool passes its "
                 "arg-max element's noise, multiplicative terms at the clean value, ADC clipping left out)")


@dataclass
class Call:
    """One device call seen on the clean pass: its rows' pre-activation, output and input norms (B, P, n)."""

    layer: AnalogLayer
    pre: np.ndarray
    out: np.ndarray
    norm2: np.ndarray


def to_rows(layer: AnalogLayer, y: np.ndarray, samples: int) -> np.ndarray:
    """A device's (R, rows, n) or a Conv's (R, B, C*P) output as (R, B, P, n): device rows per sample."""
    if layer.conv is not None:
        return np.swapaxes(y.reshape(y.shape[0], samples, layer.n_out, -1), 2, 3)
    return y.reshape(y.shape[0], samples, -1, layer.n_out)


def from_rows(layer: AnalogLayer, rows: np.ndarray) -> np.ndarray:
    """The inverse of ``to_rows``."""
    r, b = rows.shape[:2]
    if layer.conv is not None:
        return np.ascontiguousarray(np.swapaxes(rows, 2, 3)).reshape(r, b, -1)
    return rows.reshape(r, -1, layer.n_out) if layer.tmap is not None else rows.reshape(r, b, -1)


class _Perturbed:
    """The runner's ``run_layer`` for ideal devices, recording each call on the clean pass and adding
    perturbations (one per repetition) to the output of one chosen call."""

    def __init__(self, model: Any, samples: int):
        self.samples = samples
        self.linear: dict[int, tuple[AnalogLayer, Emulator]] = {}
        for layer in model.layers:          # the products and bias; the activation is applied here
            lin = layer.linear()
            emu = Emulator()
            emu.program(lin)
            self.linear[layer.index] = (lin, emu)
        self.calls: dict[tuple, Call] = {}
        self.target: tuple | None = None
        self.columns = np.zeros(0, np.int64)    # per repetition: the perturbed (row, neuron), flattened
        self.step = 0.0

    def __call__(self, layer: AnalogLayer, x: np.ndarray, repeats: int, step: int | None = None) -> np.ndarray:
        lin, emu = self.linear[layer.index]
        a = to_rows(layer, np.asarray(on_device(emu, lin, x, x.shape[0]), np.float32), self.samples)
        y = layer.activate(np.array(a))
        key = (layer.index, step)
        if self.target is None:
            self.calls[key] = Call(layer, a[0].astype(np.float64), y[0].astype(np.float64), self._norm2(layer, x))
        if key == self.target:
            y = np.repeat(y, repeats, axis=0) if y.shape[0] != repeats else y.copy()
            p, n = y.shape[2], y.shape[3]
            y[np.arange(repeats), :, self.columns // n, self.columns % n] += np.float32(self.step)
        elif y.shape[0] != repeats:
            y = np.broadcast_to(y, (repeats,) + y.shape[1:])
        return from_rows(layer, y)

    def _norm2(self, layer: AnalogLayer, x: np.ndarray) -> np.ndarray:
        """||x||^2 of every product's inputs (B, P, n) (a grouped product sees its group's inputs only)."""
        rows = im2col(np.asarray(x[0]), layer) if layer.conv is not None else np.asarray(x[0]).reshape(-1, layer.n_in)
        g = layer.groups
        sq = (rows.astype(np.float64) ** 2).reshape(rows.shape[0], g, -1).sum(-1)
        sq = np.repeat(sq, layer.n_out // g, axis=1)
        return sq.reshape(self.samples, -1, layer.n_out)


def propagate_linearised(model: Any, noises: Sequence[LayerNoise], feeds: dict[str, np.ndarray],
                         average: Mapping[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """Per analog layer of ``model``: ``mean`` (B, N) (the clean recorded output), ``var`` (B, N) and ``cm``
    (B,), to first order (module doc); ``noises`` one per layer, ``feeds`` the graph inputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # many small products: one thread is faster than torch's default (and shares)
    try:
        return _linearised(model, noises, feeds, average)
    finally:
        torch.set_num_threads(threads)


def _linearised(model: Any, noises: Sequence[LayerNoise], feeds: dict[str, np.ndarray],
                average: Mapping[int, int] | None) -> list[dict[str, np.ndarray]]:
    from ..forward import forward

    samples = len(next(iter(feeds.values())))
    probe = _Perturbed(model, samples)
    clean, _ = forward(model, feeds, probe, 1)
    clean = [np.asarray(c[0], np.float64) for c in clean]
    var = [np.zeros_like(c) for c in clean]
    total = [np.zeros(samples) for _ in clean]
    widest = max([c.out[0].size for c in probe.calls.values()] + [c.shape[1] for c in clean])
    for key, call in list(probe.calls.items()):
        nz = noises[call.layer.index]
        k = (average or {}).get(call.layer.index, 1)
        parts = call_noise(call, nz.scaled(1.0 / k) if k != 1 else nz)
        n = call.out.shape[2]
        rows_per_pass = max(1, _BUDGET // (samples * widest * n))
        probe.target = key
        probe.step = _STEP * max(float(np.sqrt(np.mean(call.out ** 2))), 1e-6)
        for lo in range(0, call.out.shape[1], rows_per_pass):
            cols = np.arange(lo * n, min(lo + rows_per_pass, call.out.shape[1]) * n)
            jac = _jacobians(model, feeds, probe, cols, call.layer.index)
            for m, j in jac.items():
                _accumulate(j, cols, parts, nz.cols, var[m], total[m])
        probe.target = None
    return [{"mean": c, "var": v, "cm": common_mode(v, t)} for c, v, t in zip(clean, var, total)]


def _jacobians(model: Any, feeds: dict[str, np.ndarray], probe: _Perturbed, cols: np.ndarray,
               first: int) -> dict[int, np.ndarray]:
    """d(recorded layer m) / d(the target call's output element c) for c in ``cols``: {m: (len(cols), B, N_m)}
    for every layer m from ``first`` on, by central differences."""
    from ..forward import forward

    probe.columns = cols
    outs = []
    for sign in (1.0, -1.0):
        step = probe.step
        probe.step = sign * step
        rec, _ = forward(model, feeds, probe, len(cols))
        probe.step = step
        outs.append(rec)
    return {m: (np.asarray(outs[0][m], np.float64) - np.asarray(outs[1][m], np.float64)) / (2 * probe.step)
            for m in range(first, len(outs[0]))}


def call_noise(call: Call, nz: LayerNoise) -> dict[str, Any]:
    """The noise one call adds, at its output, as ``diag`` (B, P, n) variances and correlated ``shared``
    terms [(variance, weights (B, P, n))]: each adds variance * (sum over a row's tile of weights * noise)."""
    a, y = call.pre, call.out
    diag = np.zeros_like(y)
    shared = []
    post = nz.post
    diag += post.D_A + post.extra + post.D_M * y * y + post.shot * np.abs(y)
    shared += [(post.D_AC, np.ones_like(y)), (post.D_MC, y)]
    slope = call.layer.slope(np.array(a, np.float32)).astype(np.float64)
    diag += slope * slope * nz.read * call.norm2            # weight read noise: before the activation
    pre = nz.pre
    if pre is not None:
        diag += slope * slope * (pre.D_A + pre.D_M * a * a)
        shared += [(pre.D_AC, slope), (pre.D_MC, slope * a)]
    return {"diag": diag, "shared": [(v, w) for v, w in shared if v]}


def _accumulate(jac: np.ndarray, cols: np.ndarray, parts: dict[str, Any], tile: int | None,
                var: np.ndarray, total: np.ndarray) -> None:
    """Add J S J^T's diagonal and sum of elements for the columns ``cols`` (whole device rows) of one call."""
    n = parts["diag"].shape[2]
    rows = cols.reshape(-1, n)[:, 0] // n
    diag = parts["diag"][:, rows, :].transpose(1, 2, 0).reshape(len(cols), -1)    # (cols, B)
    sums = jac.sum(-1)                                                            # (cols, B)
    var += np.einsum("cb,cbn->bn", diag, jac * jac)
    total += np.einsum("cb,cb->b", diag, sums * sums)
    tiles = np.arange(n) // (tile or n)
    onehot = (tiles[:, None] == np.unique(tiles)[None]).astype(np.float64)        # (n, T)
    j = jac.reshape(len(rows), n, *jac.shape[1:])                                 # (rows, n, B, N)
    for v, w in parts["shared"]:
        wr = w[:, rows, :].transpose(1, 2, 0)                                     # (rows, n, B)
        u = np.einsum("rib,it,ribm->rtbm", wr, onehot, j)
        var += v * np.einsum("rtbm,rtbm->bm", u, u)
        us = u.sum(-1)
        total += v * np.einsum("rtb,rtb->b", us, us)
