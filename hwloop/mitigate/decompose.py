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
import torch

from ..analysis.measured import layer_summary
from ..analysis.predict import LayerNoise
from ..errors import HwloopError
from ..layer import AnalogLayer, activate, activation_slope
from ..physics import affine
from .plan import Plan


@dataclass
class Operating:
    """Noise-free pre-activations and outputs of every analog layer (float64), and the first input."""

    x0: np.ndarray
    pre: list[np.ndarray]
    out: list[np.ndarray]
    slope: list[np.ndarray]          # f'(pre)


def first_input(model, x: np.ndarray) -> np.ndarray:
    """The first analog layer's input: ``x`` through the glue before it (exact ONNX semantics)."""
    feeds = {model.input_name: x}
    for step in model.steps:
        if isinstance(step, AnalogLayer):
            return np.asarray(feeds[step.input], dtype=np.float64).reshape(len(x), -1)
        feeds.update(step.run(feeds))
    raise HwloopError("the model has no analog layers")


def operating_points(model, x: np.ndarray) -> Operating:
    """Forward pass of the analog chain (float32 products, as the emulator; kept as float64).

    Glue between layers is pass-through (``onnxedit.chain_next``, checked by callers)."""
    x0 = first_input(model, x)
    h = x0.astype(np.float32)
    pre, out = [], []
    for layer in model.layers:
        if layer.conv is not None:
            raise HwloopError(f"layer {layer.index} {layer.name!r} (Conv): the mitigation advisor supports "
                              "dense layers only")
        a = affine(h, np.ascontiguousarray(layer.weight.T), layer.bias)
        h = activate(layer.activation, a.copy())
        pre.append(a.astype(np.float64))
        out.append(h.astype(np.float64))
    return Operating(x0, pre, out, [activation_slope(l.activation, a) for l, a in zip(model.layers, pre)])


def layer_gains(model, op: Operating) -> np.ndarray:
    """Per-layer mean-field gain (``hwloop.analysis.meanfield``) at the data's operating point."""
    from ..analysis.meanfield import MeanField

    gains = []
    for layer, s in zip(model.layers, op.slope):
        w = layer.weight.astype(np.float64)
        gains.append(MeanField(N=layer.n_in, w_mean=float(w.mean()), w_var=float(w.var()),
                               slope2=float(np.mean(s * s)), slope_mean=float(np.mean(s))).gain)
    return np.array(gains)


def _rank1(u: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """u u^T reduced to [diag | top row | total] (S, 2C + 1)."""
    ut = u[torch.arange(u.shape[0]), top][:, None]
    return torch.cat([u * u, ut * u, u.sum(1, keepdim=True) ** 2], 1)


def _quads(t: torch.Tensor, top: torch.Tensor, ws: list[torch.Tensor], vs: list[torch.Tensor]):
    """For T (S, C, N): T diag(w) T^T reduced, for every w in ``ws``, and T v for every v in ``vs``.

    Two batched products in all (T^2 times the w's; T times the v's and the top row weighted by the w's).
    """
    rows = torch.arange(t.shape[0])
    trow, col = t[rows, top], t.sum(1)
    wm = torch.stack(ws, 2)                                          # (S, N, K)
    diag = torch.bmm(t * t, wm)                                      # (S, C, K)
    prod = torch.bmm(t, torch.cat([trow[:, :, None] * wm, torch.stack(vs, 2)], 2))
    k = len(ws)
    total = ((col * col)[:, :, None] * wm).sum(1)                    # (S, K)
    quads = [torch.cat([diag[:, :, i], prod[:, :, i], total[:, i:i + 1]], 1) for i in range(k)]
    return quads, [prod[:, :, k + i] for i in range(len(vs))]


class Terms:
    """One layer's output-noise terms, each reduced to what the statistics need: per sample
    [diag C (C values) | row of the noise-free top class (C) | sum of all elements (1)], linear in C.
    Keys: add, mul (independent additive and signal-dependent), ac, mc (correlated additive and
    multiplicative), ac_g, mc_g (the same with ghost neurons) and ghost (the ghosts' own noise, per ghost).
    ``traces``: the sum of each term's diagonal over samples and classes."""

    def __init__(self, parts: dict[str, np.ndarray]):
        self.parts = parts
        m = (next(iter(parts.values())).shape[1] - 1) // 2
        self.traces = {k: float(v[:, :m].sum()) for k, v in parts.items()}


def _stages(layer: AnalogLayer, nz: LayerNoise, op: Operating, n: int):
    """(slope, signal, additive var, signal-dependent var, D_AC, D_MC, ghost slope, ghost signal, ghost var) per
    place where noise enters (before / after the activation), as ``predict`` applies them; places with
    no noise are left out (the one after the activation is kept when there is none at all)."""
    a, y = op.pre[n], op.out[n]
    x_in = op.x0 if n == 0 else op.out[n - 1]
    f0 = float(activate(layer.activation, np.zeros(1)).item())
    g0 = float(activation_slope(layer.activation, np.zeros(1)).item())
    pre = nz.placement in ("pre", "both") and bool(nz.D_A or nz.D_M or nz.D_AC or nz.D_MC)
    if pre or nz.read:
        read = nz.read * (x_in ** 2).sum(axis=1, keepdims=True)
        d = (nz.D_A, nz.D_M, nz.D_AC, nz.D_MC) if pre else (0.0, 0.0, 0.0, 0.0)
        yield (op.slope[n], a, np.full_like(a, d[0]), d[1] * a * a + read, d[2], d[3], g0, 0.0,
               d[0] + read[:, 0])
    d = (nz.D_A, nz.D_M, nz.D_AC, nz.D_MC) if nz.placement in ("post", "both") else (0.0, 0.0, 0.0, 0.0)
    if any(d) or nz.extra or nz.shot or not (pre or nz.read):
        yield (np.ones_like(y), y, np.full_like(y, d[0] + nz.extra), d[1] * y * y + nz.shot * np.abs(y), d[2],
               d[3], 1.0, f0, np.full(len(y), d[0] + nz.extra + d[1] * f0 * f0 + nz.shot * abs(f0)))


def decompose(model, noises: list[LayerNoise], op: Operating) -> list[Terms]:
    """The output-noise terms of every layer (backward pass of Jacobians T_n)."""
    layers = list(model.layers)
    n_cls = layers[-1].n_out
    s_count = op.x0.shape[0]
    f32 = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
    t = f32(np.eye(n_cls)).expand(s_count, n_cls, n_cls).contiguous()
    top = torch.from_numpy(op.out[-1].argmax(axis=1))
    out: list[Terms] = [None] * len(layers)
    for n in range(len(layers) - 1, -1, -1):
        layer, nz = layers[n], noises[n]
        if nz.cols is not None and nz.cols < layer.n_out:
            raise HwloopError(f"layer {n} {layer.name!r}: the profile splits its outputs into column tiles of "
                              f"{nz.cols}; the advisor assumes one correlated draw per layer")
        one = t.sum(2)                                          # T 1: a unit shift of every neuron
        stages = [(f32(s), f32(z), *rest) for s, z, *rest in _stages(layer, nz, op, n)]
        ws = [w for s, _, q_add, q_mul, *_ in stages for w in (s * s * f32(q_add), s * s * f32(q_mul))]
        quads, vecs = _quads(t, top, ws, [v for s, z, *_ in stages for v in (s, s * z)])
        acc: dict[str, torch.Tensor] = {}
        for i, (s, z, q_add, q_mul, d_ac, d_mc, s_g, z_g, q_g) in enumerate(stages):
            u, v = vecs[2 * i], vecs[2 * i + 1]
            parts = {"add": quads[2 * i], "mul": quads[2 * i + 1],
                     "ac": d_ac * _rank1(u, top), "mc": d_mc * _rank1(v, top),
                     "ac_g": d_ac * _rank1(u - one * s_g, top), "mc_g": d_mc * _rank1(v - one * s_g * z_g, top),
                     "ghost": s_g * s_g * f32(q_g)[:, None] * _rank1(one, top)}
            acc = {k: acc[k] + p if k in acc else p for k, p in parts.items()}
        out[n] = Terms({k: v.double().numpy() for k, v in acc.items()})
        if n > 0:   # T_{n-1} = T_n diag(f'(a_n)) W_n
            slope = f32(op.slope[n])
            t = torch.matmul(t * slope[:, None, :], f32(layer.weight))
    return out


def _combine(tm: dict, plan: Plan, n: int):
    """Layer n's contribution under ``plan``, from its terms (arrays or their traces alike: it is linear)."""
    g, k, e, a2 = int(plan.ghosts[n]), int(plan.copies[n]), int(plan.execs[n]), float(plan.scale[n]) ** 2
    c = (tm["add"] / a2 + tm["mul"]) / k
    # a scaled layer is linear or relu: f(0) = 0, so its ghosts carry additive noise only (/ a^2 as well)
    c = c + (tm["ac_g"] / a2 + tm["mc_g"] + tm["ghost"] / (g * k * a2) if g else tm["ac"] / a2 + tm["mc"])
    return c / e


def layer_covariances(terms: list[Terms], plan: Plan) -> list[np.ndarray]:
    """Each layer's contribution to the output covariance under ``plan`` (reduced as ``Terms``)."""
    return [_combine(tm.parts, plan, n) for n, tm in enumerate(terms)]


def layer_shares(terms: list[Terms], plan: Plan) -> np.ndarray:
    """Each layer's share of the output variance (summed over samples and classes) under ``plan``; scalars only."""
    tr = np.array([_combine(tm.traces, plan, n) for n, tm in enumerate(terms)])
    return tr / tr.sum() if tr.sum() > 0 else np.zeros(len(tr))


def output_variance(terms: list[Terms], plan: Plan) -> float:
    """Sum of the output variances over samples and classes under ``plan``: a quick objective (scalars only)."""
    return float(sum(_combine(tm.traces, plan, n) for n, tm in enumerate(terms)))


def flip_rate(mean: np.ndarray, red: np.ndarray) -> float:
    """Probability that the noisy argmax differs from the noise-free one (Gaussian, pairwise, per sample)."""
    c = mean.shape[1]
    s_idx = np.arange(len(mean))
    top = mean.argmax(axis=1)
    d = mean[s_idx, top][:, None] - mean
    diag, row = red[:, :c], red[:, c:2 * c]
    var = diag[s_idx, top][:, None] + diag - 2 * row
    with np.errstate(divide="ignore", invalid="ignore"):
        z = torch.special.ndtr(torch.from_numpy(-d / np.sqrt(np.maximum(var, 1e-300)))).numpy()
        p = np.where(var > 0, z, 0.0)
    p[s_idx, top] = 0.0
    return float(np.mean(1.0 - np.prod(1.0 - p, axis=1)))


def evaluate(terms: list[Terms], op: Operating, plan: Plan) -> dict:
    """Predicted output statistics under ``plan``: SNR (dB, median as ``analyze``), flip rate, variance, shares."""
    parts = layer_covariances(terms, plan)
    red = sum(parts)
    mean = op.out[-1]
    m = mean.shape[1]
    var = red[:, :m]
    cm = (red[:, -1] - var.sum(axis=1)) / (m * (m - 1)) if m > 1 else np.full(len(var), np.nan)
    summary = layer_summary(mean, var, cm)
    return {"snr_db": summary["snr_db_median"], "var": summary["var_mean"], "cm_var": summary["cm_var"],
            "flip_rate": flip_rate(mean, red), "shares": layer_shares(terms, plan)}


def class_shares(terms: list[Terms]) -> np.ndarray:
    """(L, 4): each layer's output variance by noise class (independent additive, independent
    signal-dependent, correlated additive, correlated multiplicative), as fractions of the total."""
    v = np.array([[t.traces[k] for k in ("add", "mul", "ac", "mc")] for t in terms])
    return v / v.sum() if v.sum() > 0 else v
