"""The covariance of a model's logits alone, from the Jacobians of the logits (no hidden covariances).

Why: a CI screen (``hwloop check --analytic``) needs the k x k covariance of
the k logits per sample, not every hidden layer's.  Carrying each hidden
layer's N x N covariance (``propagate``) costs (N / k)^2 more than carrying
the k x N Jacobian of the logits with respect to that layer, and a
convolution written out as a dense layer (N = channels x positions) makes it
far worse.  Here one forward pass in torch (the model's analog layers as
plain products and convolutions, its glue through ``finetune.glue``'s table)
and one backward pass batched over the k logits give, for every device call
c, J_c = d(logits) / d(call output); then, to first order in the noise,

    Cov(logits) = sum_c  J_c S_c J_c^T

with S_c the noise the call adds (``linearised.call_noise``: per neuron, plus
correlated terms shared within a device row's column tile).  The stated
approximations are those of ``linearised`` (multiplicative terms at the clean
value, glue linearised, MaxPool passes its arg-max element's noise), except
that a hidden layer's ADC range clips the clean pass and stops the gradient
of the clipped neurons.  Models outside the glue table, recurrent layers,
per-token products and transposed convolutions raise ``Outside``: the caller
uses the general prediction instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..layer import AnalogLayer
from .linearised import Call, call_noise
from .noise import LayerNoise


class Outside(Exception):
    """The model is outside what this module differentiates (the message says why)."""


#: float32 values of the logits' Jacobians held at once (k x samples x every call's outputs): samples go in chunks
_BUDGET = 1 << 25


def logit_moments(model: Any, noises: Sequence[LayerNoise], feeds: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(the clean logits (B, k), their first-order noise covariance (B, k, k), float64; whether a hidden ADC
    range clipped any clean value): the logits are the last analog layer's output before its ADC
    (``noises[-1]`` should have no ADC range).  Without clipping the logits are the ideal model's."""
    from ..errors import HwloopError
    from ..finetune.glue import convert

    try:
        glue = convert(model)
    except HwloopError as e:
        raise Outside(str(e)) from None
    last = model.layers[-1]
    if noises[-1].rows is not None and last.n_in > noises[-1].rows:
        raise Outside(f"the last layer {last.name!r} is split into row tiles (its ADC digitises partial sums)")
    n = len(next(iter(feeds.values())))
    width = last.n_out * sum(l.n_out * (l.positions or 1) for l in model.layers)
    chunk = max(1, _BUDGET // max(1, width))
    parts = [_moments(model, glue, noises, {k: v[lo:lo + chunk] for k, v in feeds.items()})
             for lo in range(0, n, chunk)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            any(p[2] for p in parts))


def _moments(model: Any, glue: dict, noises: Sequence[LayerNoise], feeds: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, bool]:
    """``logit_moments`` for one chunk of samples."""
    taps: list[torch.Tensor] = []
    calls: list[tuple[Call, LayerNoise]] = []
    clipped: list[bool] = []
    z = _forward(model, glue, feeds, noises, (taps, calls, clipped))
    k = z.shape[1]
    eye = torch.eye(k, dtype=z.dtype)[:, None, :].expand(k, *z.shape).contiguous()
    grads = torch.autograd.grad(z, taps, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
    u = torch.cat([f for (call, nz), g in zip(calls, grads) if g is not None
                   for f in call_factors(call, nz, g)], dim=2)              # (B, k, every call's terms)
    cov = torch.bmm(u, u.transpose(1, 2))
    return z.detach().numpy().astype(np.float64), cov.numpy().astype(np.float64), any(clipped)


def _forward(model: Any, glue: dict, feeds: dict[str, np.ndarray], noises: Sequence[LayerNoise], seen: tuple
             ) -> torch.Tensor:
    """The clean pass up to the last analog layer; ``seen`` = (taps, calls, clipped) lists it fills: a zero tap
    on every call's output, the call, whether a hidden ADC clipped."""
    from ..graph import Glue

    env = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in feeds.items()}
    last = model.layers[-1]
    for i, step in enumerate(model.steps):
        if i in glue:
            g = glue[i]
            env.update(g({t: env[t] for t in g.glue.inputs if t in env}))
        elif not isinstance(step, Glue) and step.input in env:
            env[step.output] = _layer(step, env[step.input], noises[step.index], *seen)
            if step is last:
                return env[step.output].reshape(len(env[step.output]), -1)
    raise Outside(f"the last analog layer {last.name!r} is not on the scored output's path")


def _layer(layer: AnalogLayer, x: torch.Tensor, nz: LayerNoise, taps: list, calls: list, clipped: list
           ) -> torch.Tensor:
    """One analog layer in torch, its call recorded and tapped: product, bias, activation, hidden ADC clip."""
    if layer.recurrent is not None or layer.tmap is not None:
        raise Outside(f"layer {layer.name!r}: recurrent and per-token products are not differentiated here")
    x = x.to(torch.float32)
    w = torch.from_numpy(np.ascontiguousarray(layer.weight, np.float32)).reshape(layer.n_out, -1)
    b = torch.from_numpy(np.ascontiguousarray(layer.bias, np.float32))
    if nz.rows is not None and layer.n_in > nz.rows and layer.groups == 1:
        return _tiled(layer, x.reshape(len(x), -1), w, b, nz, (taps, calls, clipped))
    if layer.conv is None:
        rows = x.reshape(len(x), -1)
        if layer.groups > 1:                                              # (g, o, i): the block-diagonal matrix
            w = torch.from_numpy(np.ascontiguousarray(layer.dense_weight(), np.float32))
        a = (rows @ w.T + b)[:, None, :]                                  # (B, 1, n)
        norm2 = _dense_norm2(rows, layer) if nz.read else None
    else:
        a, norm2 = _conv(layer, x, w, b, nz.read != 0)                    # (B, P, n)
    y = layer_activation(layer, a)
    tap = torch.zeros_like(y, requires_grad=True)
    out = y + tap
    pre = a.detach().numpy().astype(np.float64)
    calls.append((Call(layer, pre, y.detach().numpy().astype(np.float64),
                       np.zeros_like(pre) if norm2 is None else norm2), nz))
    taps.append(tap)
    if nz.clip is not None:
        lo, hi = nz.clip
        clipped.append(bool(((y < lo) | (y > hi)).any()))
        out = out.clamp(lo, hi)
    if layer.conv is None:
        return out[:, 0, :]
    spatial = tuple(layer.meta["out_spatial"])
    return out.transpose(1, 2).reshape((len(x), layer.n_out) + spatial)


def _tiled(layer: AnalogLayer, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, nz: LayerNoise, seen: tuple
           ) -> torch.Tensor:
    """A dense layer longer than the array's rows, as the emulator runs it: each row tile's partial sums get
    the tile's noise (and its ADC), are added on the host with the bias, and the activation follows there."""
    if layer.conv is not None:
        raise Outside(f"layer {layer.name!r}: a convolution split into row tiles is not differentiated here")
    taps, calls, clipped = seen
    linear, tile = layer.linear(), replace(nz, placement="post")
    a = b
    for lo in range(0, layer.n_in, nz.rows):
        part = x[:, lo:lo + nz.rows]
        p = (part @ w[:, lo:lo + nz.rows].T)[:, None, :]                  # (B, 1, n): the tile's partial sums
        norm2 = (part.detach().double() ** 2).sum(-1)[:, None, None].expand_as(p).numpy()
        p64 = p.detach().numpy().astype(np.float64)
        calls.append((Call(linear, p64, p64, norm2), tile))
        taps.append(torch.zeros_like(p, requires_grad=True))
        q = p + taps[-1]
        if nz.clip is not None:
            clipped.append(bool(((p < nz.clip[0]) | (p > nz.clip[1])).any()))
            q = q.clamp(*nz.clip)
        a = a + q[:, 0, :]
    return layer_activation(layer, a)


def layer_activation(layer: AnalogLayer, a: torch.Tensor) -> torch.Tensor:
    """The layer's activation (with its parameters) on a torch tensor, neurons last, differentiable."""
    from ..activations import TABLE

    if layer.activation not in TABLE:
        raise Outside(f"layer {layer.name!r}: activation {layer.activation!r} is not differentiated here")
    return TABLE[layer.activation][0](a, layer.act_params or {})


def _conv(layer: AnalogLayer, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, want_norm: bool):
    """A convolution's pre-activation as device rows (B, P, n), and (when ``want_norm``) every product's
    input ||x||^2 (B, P, n) (a grouped product sees its group's inputs only)."""
    spec = layer.conv
    nd = len(spec.kernel_shape)
    if spec.transposed or nd > 3:
        raise Outside(f"layer {layer.name!r}: transposed or {nd}-d convolutions are not differentiated here")
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    pads = [p for d in reversed(range(nd)) for p in (spec.pads[d], spec.pads[nd + d])]
    if any(pads):
        x = F.pad(x, pads)
    kw = dict(stride=spec.strides, dilation=spec.dilations, groups=spec.groups)
    a = conv(x, w.reshape(layer.n_out, -1, *spec.kernel_shape), b, **kw)
    rows = a.reshape(len(x), layer.n_out, -1).transpose(1, 2)
    norm2 = None
    if want_norm:
        g = spec.groups
        ones = torch.ones((g, x.shape[1] // g, *spec.kernel_shape), dtype=x.dtype)
        sq = conv(x.detach() ** 2, ones, None, **kw).reshape(len(x), g, -1).transpose(1, 2)
        norm2 = np.repeat(sq.numpy().astype(np.float64), layer.n_out // g, axis=2)
    return rows, norm2


def _dense_norm2(rows: torch.Tensor, layer: AnalogLayer) -> np.ndarray:
    """||x||^2 of a dense product's inputs (B, 1, n) (per group for a grouped product)."""
    g = layer.groups
    sq = (rows.detach().double() ** 2).reshape(len(rows), g, -1).sum(-1).numpy()
    return np.repeat(sq, layer.n_out // g, axis=1)[:, None, :]


def call_factors(call: Call, nz: LayerNoise, jac: torch.Tensor) -> list[torch.Tensor]:
    """Factors U (B, k, m) of one call's J S J^T = sum U U^T: J (k, B, P, n) the logits' Jacobian with respect
    to the call's output, S the noise it adds (``call_noise``: independent per neuron, plus correlated terms
    shared within a device row's column tile)."""
    parts = call_noise(call, nz)
    k, b, p, n = jac.shape
    as_t = lambda v: torch.from_numpy(np.asarray(v, np.float32))              # noqa: E731
    out = [(jac * as_t(np.sqrt(parts["diag"]))).reshape(k, b, -1).transpose(0, 1)]
    if parts["shared"]:
        tiles = torch.arange(n) // (nz.cols or n)
        onehot = torch.nn.functional.one_hot(tiles).to(jac.dtype)              # (n, tiles)
        for v, w in parts["shared"]:
            u = torch.matmul(jac * as_t(w), onehot)                            # (k, B, P, tiles)
            out.append(float(np.sqrt(v)) * u.reshape(k, b, -1).transpose(0, 1))
    return out
