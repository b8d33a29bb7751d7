"""Propagating the noise covariance through a chain of dense layers, sample by sample (no sampling).

Linearised at the noise-free operating point of each sample (x: clean layer
output, a: its pre-activation, J_n = diag(f'(a_n)) W_n), the covariance of a
layer's output obeys

    C_n = J_n C_{n-1} J_n^T + diag(D_A + D_M E[x^2]) + D_AC 1 1^T + D_MC E[x x^T]

with E[x x^T] = x x^T + P (P: the covariance arriving at the noise stage), which
makes the multiplicative terms exact for a noisy input.  The full N x N
covariance of every sample is carried exactly, in factored form
(``hwloop.analysis.covariance``); the noise stages are
``hwloop.analysis.noise``.  A model's convolutions and linear glue become
dense links first (``hwloop.analysis.chain``); the glue before the first
analog layer is run exactly, by the runner's own walk over the model's steps.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..data import Dataset
from ..errors import HwloopError
from ..layer import AnalogLayer
from ..physics import affine
from .chain import _dims, dense_chain
from .covariance import FactoredCovariance
from .noise import LayerNoise, add_noise, in_range

#: least work (samples x widest layer's outputs squared) worth a thread of its own in ``propagate``: below it,
#: waking torch's threads costs more than they save (several times more on a busy machine)
_MIN_SHARE = 64 * 256 * 256


def propagate(layers: Sequence[AnalogLayer], noises: Sequence[LayerNoise], x: np.ndarray,
              average: Mapping[int, int] | None = None, dtype: str = "float64", *,
              common: bool = True) -> list[dict[str, np.ndarray]]:
    """Clean forward pass (float64) and covariance propagation (``dtype``) for inputs x (B, n_in).

    ``average`` maps a layer index to k: that layer is executed k times on the
    same input and averaged, dividing its own fresh noise variances by k.
    Returns, per layer, ``mean`` (B, N) (the clean output), ``pre`` (its
    pre-activation), ``var`` (B, N) and ``cm`` (B,) (the mean off-diagonal
    covariance; NaN unless ``common``: it costs a product per layer that callers wanting the variances
    alone skip).
    """
    if len(layers) != len(noises):
        raise ValueError("one LayerNoise per layer")
    if dtype not in ("float64", "float32"):
        raise HwloopError(f"prediction dtype must be float64 or float32, not {dtype!r}")
    # Samples are independent: each of torch's threads propagates its own share of them on one intra-op
    # thread.  About a hundred small steps per layer: splitting each across threads (torch's default) costs
    # more in synchronisation than it saves (2x slower on the bench, far more on a shared CPU).
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    threads = torch.get_num_threads()
    shares = worth_threads(len(x), max(layer.n_out for layer in layers))
    bounds = np.linspace(0, len(x), shares + 1).astype(int)
    tdt = getattr(torch, dtype)

    def run(k: int) -> list[dict[str, np.ndarray]]:
        torch.set_num_threads(1)
        return _propagate(layers, noises, x[bounds[k]:bounds[k + 1]], average, tdt, common)

    try:
        if shares == 1:
            res = [run(0)]
        else:
            with ThreadPoolExecutor(shares) as pool:
                res = list(pool.map(run, range(shares)))
    finally:
        torch.set_num_threads(threads)
    if shares == 1:
        return res[0]
    return [{key: np.concatenate([r[k][key] for r in res]) for key in res[0][k]} for k in range(len(layers))]


def worth_threads(samples: int, width: int) -> int:
    """How many of torch's threads ``samples`` samples of a covariance ``width`` wide are worth (1: stay on
    the calling thread)."""
    return max(1, min(torch.get_num_threads(), samples * width * width // _MIN_SHARE))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` of torch's intra-op threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _propagate(layers: Sequence[AnalogLayer], noises: Sequence[LayerNoise], x: np.ndarray,
               average: Mapping[int, int] | None, tdt: torch.dtype, common: bool) -> list[dict[str, np.ndarray]]:
    """``propagate`` for one share of the samples (arguments checked by it)."""
    cov: FactoredCovariance | None = None
    out = []
    for n, (layer, nz) in enumerate(zip(layers, noises)):
        if layer.conv is not None:
            raise HwloopError(f"layer {layer.name!r}: the prediction supports dense layers only, not Conv")
        if x.shape[1] != layer.n_in:
            raise HwloopError(f"layer {layer.name!r}: takes {layer.n_in} inputs, gets {x.shape[1]}")
        k = (average or {}).get(n, 1)
        if k != 1:
            nz = nz.scaled(1.0 / k)
        y, cov, stats = _through_layer(layer, nz, x, cov, tdt, n == len(layers) - 1, common)
        out.append(stats)
        x = y
    return out


def _through_layer(layer: AnalogLayer, nz: LayerNoise, x: np.ndarray, cov: FactoredCovariance | None,
                   tdt: torch.dtype, last: bool, common: bool
                   ) -> tuple[np.ndarray, FactoredCovariance, dict[str, np.ndarray]]:
    """One layer: its clean output, the covariance after it, and the per-layer statistics (the common mode
    only when ``common``)."""
    w = np.asarray(layer.dense_weight(), dtype=np.float64)
    a = affine(x, w.T, np.asarray(layer.bias, dtype=np.float64))
    y = layer.activate(a.copy())
    slope, wt, at, yt = (torch.from_numpy(np.asarray(v, np.float64)).to(tdt) for v in (layer.slope(a), w, a, y))
    pre = nz.pre
    incoming = None
    if cov is not None:  # J C J^T, with J = diag(f') W unless noise is added between W and f'
        incoming = cov.sandwich(wt, None if pre else slope, fold=not last)
    if nz.read:  # weight read noise: variance read * E||x||^2 of the inputs every product reads, independent
        sq = torch.from_numpy(x ** 2).to(tdt)
        if cov is not None:
            sq = sq + cov.diagonal()
        ex2 = (sq.sum(-1, keepdim=True).expand_as(at) if nz.support is None
               else sq @ torch.from_numpy(np.asarray(nz.support, np.float64)).to(tdt).T)
        read = nz.read * ex2
        incoming = incoming or FactoredCovariance.zero(at)
        incoming.add_(read if pre else read * slope * slope)
    if pre is not None:
        incoming = add_noise(incoming, at, pre)
        incoming.scale_rows_(slope)
    cov = add_noise(incoming, yt, nz.post)
    if nz.clip is not None:  # the ADC clips: a neuron passes its fluctuation with the probability to be in range
        cov.scale_rows_(in_range(yt, cov.diagonal(), *nz.clip))
        y = np.clip(y, *nz.clip)
    var = cov.diagonal().numpy().astype(np.float64)
    cm = common_mode(var, cov.total().numpy().astype(np.float64)) if common else np.full(len(var), np.nan)
    return y, cov, {"mean": y, "var": var, "cm": cm, "pre": a}


def common_mode(var: np.ndarray, total: np.ndarray) -> np.ndarray:
    """The mean off-diagonal covariance per sample, from the variances (B, N) and the sums of all elements (B,)."""
    m = var.shape[1]
    return (total - var.sum(axis=1)) / (m * (m - 1)) if m > 1 else np.full(len(var), np.nan)


def model_feeds(model: Any, data: Any) -> dict[str, np.ndarray]:
    """The data (a ``Dataset`` or an input array, samples first) as the model's graph inputs."""
    from ..runner import model_inputs

    if not isinstance(data, Dataset):
        x = np.asarray(data)
        data = Dataset("the given array", x, np.zeros(len(x), np.int64), 0)
    return model_inputs(model, data)


def first_input(model: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first analog layer's noise-free input (B, n): the data through the glue before it, run exactly
    by the runner's walk over the model's steps."""
    from ..forward import run_steps     # the runner's walk: glue and layers as ``hwloop run`` executes them

    steps = list(getattr(model, "steps", []))
    first = next((i for i, s in enumerate(steps) if isinstance(s, AnalogLayer)), None)
    if first is None:
        x = next(iter(feeds.values()))
        return x.reshape(len(x), -1)
    env = {k: (v, 1) for k, v in feeds.items()}
    run_steps(model, steps[:first], env, [], None, 1)
    x = np.asarray(env[steps[first].input][0])
    return x.reshape(len(next(iter(feeds.values()))), -1)


def propagate_chain(model: Any, layers: Sequence[AnalogLayer], noises: Sequence[LayerNoise], x0: np.ndarray,
                    average: Mapping[int, int] | None, dtype: str, common: bool = True) -> list[dict[str, np.ndarray]]:
    """``propagate`` through the model's dense chain (convolutions written out, linear glue between
    layers as noise-free links); results for the model's layers only."""
    if not hasattr(model, "steps"):
        return propagate(layers, noises, x0, average, dtype, common=common)
    chain = dense_chain(model, _dims(model, layers[0].input))
    by_index = {layer.index: nz for layer, nz in zip(layers, noises)}
    c_noises = [LayerNoise() if lk.source is None
                else replace(by_index[lk.source], groups=lk.groups, support=lk.support) for lk in chain]
    c_avg = {k: (average or {})[lk.source] for k, lk in enumerate(chain) if lk.source in (average or {})}
    res = propagate([lk.layer for lk in chain], c_noises, x0, c_avg, dtype, common=common)
    return [r for r, lk in zip(res, chain) if lk.source is not None]
