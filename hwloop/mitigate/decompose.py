"""The output noise of a dense chain split by layer and noise class, so any mitigation plan is a weighted sum.

Linearised at each sample's noise-free operating point (as ``hwloop.analysis.
predict``), the covariance of the network output is a sum over layers n of
``T_n Q_n T_n^T``: T_n (classes x N_n) is the Jacobian of the output with
respect to layer n's output, Q_n the fresh noise of layer n.  Q_n has an
independent additive part, an independent signal-dependent part (D_M z^2,
shot, read), and the correlated parts D_AC 1 1^T and D_MC z z^T (z: the
signal where the noise enters, through the slope f' when it enters before
the activation).  What each strategy does to these parts is exact in this
linear picture:

- duplication by k divides the independent parts by k (the next layer averages
  k independent copies) and leaves the correlated parts;
- multi-execution by k divides every part by k (k separate draws);
- ghost neurons replace the correlated response vectors u = T 1 and v = T z by
  u - T1 f'_g and v - T1 f'_g z_g (the ghost's column is -sum_j W_ij) and add
  the ghost's own independent noise through T 1;
- slope scaling by a divides the additive parts by a^2 and keeps the rest.

So the terms are computed once per layer (one backward pass of Jacobians)
and a plan costs a few sums of (sample, class, class) arrays: no sampling and
no propagation per candidate.  Second-order terms (noise reaching the next
multiplicative stage, clipping) are left out; ``predict`` on the rewritten
model keeps them and is what the proof compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from ..analysis.measured import layer_summary
from ..analysis.predict import LayerNoise
from ..errors import HwloopError
from ..layer import AnalogLayer, activate, activation_slope
from .plan import Plan


@dataclass
class Operating:
    """Noise-free pre-activations and outputs of every analog layer (float64), and the first input."""

    x0: np.ndarray
    pre: list[np.ndarray]
    out: list[np.ndarray]


def first_input(model, x: np.ndarray) -> np.ndarray:
    """The first analog layer's input: ``x`` through the glue before it (exact ONNX semantics)."""
    feeds = {model.input_name: x}
    for step in model.steps:
        if isinstance(step, AnalogLayer):
            return np.asarray(feeds[step.input], dtype=np.float64).reshape(len(x), -1)
        feeds.update(step.run(feeds))
    raise HwloopError("the model has no analog layers")


def operating_points(model, x: np.ndarray) -> Operating:
    """Forward pass of the analog chain in float64 (glue between layers is pass-through, checked by callers)."""
    h = x0 = first_input(model, x)
    pre, out = [], []
    for layer in model.layers:
        if layer.conv is not None:
            raise HwloopError(f"layer {layer.index} {layer.name!r} (Conv): the mitigation advisor supports "
                              "dense layers only")
        a = h @ layer.weight.T.astype(np.float64) + layer.bias.astype(np.float64)
        h = activate(layer.activation, a.copy())
        pre.append(a)
        out.append(h)
    return Operating(x0, pre, out)


def layer_gains(model, op: Operating) -> np.ndarray:
    """Per-layer mean-field gain (``hwloop.analysis.meanfield``) at the data's operating point."""
    from ..analysis.meanfield import MeanField

    gains = []
    for layer, a in zip(model.layers, op.pre):
        s = activation_slope(layer.activation, a)
        w = layer.weight.astype(np.float64)
        gains.append(MeanField(N=layer.n_in, w_mean=float(w.mean()), w_var=float(w.var()),
                               slope2=float(np.mean(s * s)), slope_mean=float(np.mean(s))).gain)
    return np.array(gains)


def _outer(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """T diag(w) T^T per sample: t (S, C, N), w (S, N) >= 0 -> (S, C, C)."""
    m = t * np.sqrt(w)[:, None, :]
    return m @ m.transpose(0, 2, 1)


def _vv(v: np.ndarray) -> np.ndarray:
    return v[:, :, None] * v[:, None, :]


@dataclass
class Terms:
    """One layer's output-noise terms (S, C, C); ``*_g``: with ghost neurons; ``ghost``: per ghost (/ count)."""

    add: np.ndarray
    mul: np.ndarray
    ac: np.ndarray
    mc: np.ndarray
    ac_g: np.ndarray
    mc_g: np.ndarray
    ghost: np.ndarray


def _stages(layer: AnalogLayer, nz: LayerNoise, a: np.ndarray, y: np.ndarray, x_in: np.ndarray):
    """(slope, signal, additive var, signal-dependent var, D_AC, D_MC, ghost slope, ghost signal, ghost var) per
    place where noise enters (before / after the activation), as ``predict`` applies them."""
    pre = nz.placement in ("pre", "both")
    post = nz.placement in ("post", "both")
    s_pre = activation_slope(layer.activation, a)
    f0 = float(activate(layer.activation, np.zeros(1)).item())
    g0 = float(activation_slope(layer.activation, np.zeros(1)).item())
    read = nz.read * (x_in ** 2).sum(axis=1, keepdims=True) * np.ones_like(a)
    d = (nz.D_A, nz.D_M, nz.D_AC, nz.D_MC) if pre else (0.0, 0.0, 0.0, 0.0)
    yield s_pre, a, np.full_like(a, d[0]), d[1] * a * a + read, d[2], d[3], g0, 0.0, d[0] + read[:, 0]
    d = (nz.D_A, nz.D_M, nz.D_AC, nz.D_MC) if post else (0.0, 0.0, 0.0, 0.0)
    yield (np.ones_like(y), y, np.full_like(y, d[0] + nz.extra), d[1] * y * y + nz.shot * np.abs(y), d[2], d[3],
           1.0, f0, np.full(len(y), d[0] + nz.extra + d[1] * f0 * f0 + nz.shot * abs(f0)))


def decompose(model, noises: list[LayerNoise], op: Operating) -> list[Terms]:
    """The output-noise terms of every layer (backward pass of Jacobians T_n)."""
    layers = list(model.layers)
    n_cls = layers[-1].n_out
    s_count = op.x0.shape[0]
    t = np.broadcast_to(np.eye(n_cls), (s_count, n_cls, n_cls))
    out: list[Terms] = [None] * len(layers)
    for n in range(len(layers) - 1, -1, -1):
        layer, nz = layers[n], noises[n]
        if nz.cols is not None and nz.cols < layer.n_out:
            raise HwloopError(f"layer {n} {layer.name!r}: the profile splits its outputs into column tiles of "
                              f"{nz.cols}; the advisor assumes one correlated draw per layer")
        one = t.sum(axis=2)                                     # T 1: a unit shift of every neuron
        x_in = op.x0 if n == 0 else op.out[n - 1]
        acc = {k: np.zeros((s_count, n_cls, n_cls)) for k in ("add", "mul", "ac", "mc", "ac_g", "mc_g", "ghost")}
        for s, z, q_add, q_mul, d_ac, d_mc, s_g, z_g, q_g in _stages(layer, nz, op.pre[n], op.out[n], x_in):
            acc["add"] += _outer(t, s * s * q_add)
            acc["mul"] += _outer(t, s * s * q_mul)
            u, v = np.einsum("scn,sn->sc", t, s), np.einsum("scn,sn->sc", t, s * z)
            acc["ac"] += d_ac * _vv(u)
            acc["mc"] += d_mc * _vv(v)
            acc["ac_g"] += d_ac * _vv(u - one * s_g)
            acc["mc_g"] += d_mc * _vv(v - one * s_g * z_g)
            acc["ghost"] += s_g * s_g * q_g[:, None, None] * _vv(one)
        out[n] = Terms(**acc)
        if n > 0:   # T_{n-1} = T_n diag(f'(a_n)) W_n
            t = (t * activation_slope(layer.activation, op.pre[n])[:, None, :]) @ layer.weight.astype(np.float64)
    return out


def layer_covariances(terms: list[Terms], plan: Plan) -> list[np.ndarray]:
    """Each layer's contribution (S, C, C) to the output covariance under ``plan``."""
    out = []
    for n, tm in enumerate(terms):
        g, k, e, a2 = int(plan.ghosts[n]), int(plan.copies[n]), int(plan.execs[n]), float(plan.scale[n]) ** 2
        c = (tm.add / a2 + tm.mul) / k
        c = c + (tm.ac_g / a2 + tm.mc_g + tm.ghost / (g * k) if g else tm.ac / a2 + tm.mc)
        out.append(c / e)
    return out


def flip_rate(mean: np.ndarray, cov: np.ndarray) -> float:
    """Probability that the noisy argmax differs from the noise-free one (Gaussian, pairwise, per sample)."""
    s_idx = np.arange(len(mean))
    top = mean.argmax(axis=1)
    d = mean[s_idx, top][:, None] - mean
    diag = np.diagonal(cov, axis1=1, axis2=2)
    var = diag[s_idx, top][:, None] + diag - 2 * cov[s_idx, top, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(var > 0, ndtr(-d / np.sqrt(np.maximum(var, 1e-300))), 0.0)
    p[s_idx, top] = 0.0
    return float(np.mean(1.0 - np.prod(1.0 - p, axis=1)))


def evaluate(terms: list[Terms], op: Operating, plan: Plan) -> dict:
    """Predicted output statistics under ``plan``: SNR (dB, median as ``analyze``), flip rate, variance, shares."""
    parts = layer_covariances(terms, plan)
    cov = sum(parts)
    mean = op.out[-1]
    var = np.diagonal(cov, axis1=1, axis2=2)
    m = var.shape[1]
    cm = (cov.sum(axis=(1, 2)) - var.sum(axis=1)) / (m * (m - 1)) if m > 1 else np.full(len(var), np.nan)
    summary = layer_summary(mean, var, cm)
    tr = np.array([np.trace(p, axis1=1, axis2=2).sum() for p in parts])
    return {"snr_db": summary["snr_db_median"], "var": summary["var_mean"], "cm_var": summary["cm_var"],
            "flip_rate": flip_rate(mean, cov), "shares": tr / tr.sum() if tr.sum() > 0 else np.zeros(len(tr))}
