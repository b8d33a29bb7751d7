"""``--analytic``: screen a model without sampling, from the predicted covariance of its logits.

``hwloop.analysis.predict`` gives, per sample, the first-order covariance of
every analog layer's output.  A noise-free linear layer of all pairwise
differences z_j - z_k, appended after the last analog layer, makes it give
the variances of the contrasts too, from which the full covariance of
u = z_1.. - z_0 follows.  With u Gaussian (mean: the noise-free logits), the
probability that each class wins is an orthant probability, evaluated with
a fixed set of quasi-random normal points (scrambled Sobol, common to all samples, so the screen is
deterministic and costs far less than running the network); samples whose
every contrast is more than ``_SURE`` standard deviations from zero keep
their noise-free class with certainty.

The decision uses the same bars and bounds as sampling, as if with infinitely
many repeats: in the population scope the per-sample probabilities vary
over samples; in the dataset scope nothing is random left.  Effects the
prediction leaves out (static programming, gain/offset, see
docs/analysis.md) are named in the result.  The model's class is the argmax
of its last analog layer (identity glue or softmax after it).
"""

from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np

from .. import cf
from ..data import Dataset
from ..errors import HwloopError
from ..layer import AnalogLayer
from ..profiles import ideal_profile
from .bars import Bars
from .result import CheckResult
from .stats import BarState, Estimate, estimate, look_quantiles

_DRAWS = 1024
_SURE = 4.5


def class_probabilities(model, profile, x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(P(class k wins) per sample (n, k), noise-free class (n,), effects not modelled)."""
    from ..analysis.predict import predict

    last = model.layers[-1]
    k = last.n_out
    pairs = list(combinations(range(k), 2))
    d = np.zeros((len(pairs), k), np.float32)
    for row, (i, j) in enumerate(pairs):
        d[row, i], d[row, j] = 1.0, -1.0
    contrasts = AnalogLayer(index=len(model.layers), name="hwloop-contrasts", op="Gemm", weight=d,
                            bias=np.zeros(len(pairs), np.float32), input=last.output, output="hwloop-contrasts")
    at = model.steps.index(last) + 1
    wrapped = dataclasses.replace(model, layers=[*model.layers, contrasts],
                                  steps=[*model.steps[:at], contrasts, *model.steps[at:]])
    pred = predict(wrapped, [profile] * len(model.layers) + [ideal_profile()], x)
    L = len(model.layers)
    mean = np.asarray(cf.layer_array(pred, "mean", L - 1), np.float64)
    v = np.asarray(cf.layer_array(pred, "var", L), np.float64)       # Var(z_i - z_j), (n, pairs)
    var = np.zeros((len(mean), k, k))
    for row, (i, j) in enumerate(pairs):
        var[:, i, j] = var[:, j, i] = v[:, row]
    cov = 0.5 * (var[:, :1, 1:] + var[:, 1:, :1] - var[:, 1:, 1:])  # Cov(z_i - z_0, z_j - z_0)
    return _win_probabilities(mean, var, cov, seed), mean.argmax(axis=1), str(pred.attrs.get("not_modelled", ""))


def _win_probabilities(mean: np.ndarray, var: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """P(class wins) per sample: mean (n, k) logits, var (n, k, k) Var(z_i - z_j), cov of the contrasts."""
    n, k = mean.shape
    rows = np.arange(n)
    top = mean.argmax(axis=1)
    probs = np.zeros((n, k))
    probs[rows, top] = 1.0
    margin = mean[rows, top][:, None] - mean
    sd = np.sqrt(np.maximum(var[rows, top], 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, margin / np.where(sd > 0, sd, 1.0), np.inf)
    z[rows, top] = np.inf
    unsure = np.flatnonzero(z.min(axis=1) < _SURE)
    if unsure.size:
        w, vec = np.linalg.eigh(cov[unsure])
        root = vec * np.sqrt(np.clip(w, 0, None))[:, None, :]
        eps = _normal_points(k - 1, seed)
        u = (mean[unsure, 1:] - mean[unsure, :1]).astype(np.float32)
        draws = np.matmul(eps, root.transpose(0, 2, 1).astype(np.float32)) + u[:, None, :]
        best = np.where(draws.max(axis=2) > 0, draws.argmax(axis=2) + 1, 0)
        probs[unsure] = (best[:, :, None] == np.arange(k)).mean(axis=1)
    return probs


def _normal_points(dim: int, seed: int) -> np.ndarray:
    """``_DRAWS`` standard normal points in ``dim`` dimensions: scrambled Sobol (lower error than random)."""
    from scipy.stats import norm, qmc

    u = qmc.Sobol(dim, scramble=True, seed=np.random.default_rng([seed, 0xA7A1])).random(_DRAWS)
    return norm.ppf(np.clip(u, 1e-12, 1 - 1e-12)).astype(np.float32)


def analytic_check(model, target, ds: Dataset, bars: Bars, *, scope: str, confidence: float, seed: int,
                   data_name: str) -> CheckResult:
    """The screen as a ``CheckResult`` (method ``analytic``, no repeats)."""
    if bars.metric != "accuracy":
        raise HwloopError("--analytic screens classifiers (accuracy bars); regressors need sampling")
    from ..runner import model_input

    x = model_input(model, ds)
    probs, clean, skipped = class_probabilities(model, target.profile, x, seed)
    correct = probs[np.arange(len(ds)), ds.y]
    names = bars.names()
    z_pass, z_fail = look_quantiles(1.0 - confidence, 1, len(names))
    states = []
    for name, direction, threshold in names:
        if name == "accuracy":
            v = correct
        elif name == "drop":
            v = (clean == ds.y) - correct
        elif name == "flip_rate":
            v = 1.0 - probs[np.arange(len(ds)), clean]
        else:
            v = correct[ds.y == int(name.split()[-1].rstrip("]"))]
        est = (estimate(v[None], "population", z=z_pass) if scope == "population"
               else Estimate(float(v.mean()), 0.0, len(v), 0))
        s = BarState(name, direction, threshold)
        s.update(est, z_pass, z_fail)
        states.append(s)
    decision = "fail" if any(s.decision == "fail" for s in states) else (
        "pass" if all(s.decision == "pass" for s in states) else "undecided")
    return CheckResult(model=str(model.path), profile=target.name, profile_sha256=target.sha256, data=data_name,
                      repeats=0, seed=seed, decision=decision, bars=states, scope=scope, confidence=confidence,
                      max_repeats=0, clean_accuracy=float((clean == ds.y).mean()), method="analytic",
                      not_modelled="" if skipped in ("", "none") else skipped)
