"""Confidence bounds and sequential decisions for statistics of repeated noisy evaluations.

A check evaluates every sample R times under fresh noise.  Those R x n
outcomes are not n R independent trials: a sample that is hard stays hard in
every repeat.  The model (a two-way layout, docs/check.md) is

    v_ri = theta + a_i + e_ri

with a_i the sample's own deviation (samples drawn from a population) and
e_ri the noise of repeat r on sample i.  ``scope`` says what the claim is
about:

- ``population``: new samples from the distribution the data came from.
  Var(mean) = Var(a)/n + Var(e)/(n R), estimated without bias by the
  variance of the per-sample means over samples, divided by n (the
  cluster-robust estimate; it needs no split of the two parts).
- ``dataset``: exactly these samples; only the noise is random.
  Var(mean) = sum_i Var_r(v_ri) / (n^2 R).

The standard error is never taken below ``span / units`` (units: samples, or
sample-repeats in the dataset scope), times z: a statistic that has not moved
yet is not claimed exact (the Wilson bound of an all-success outcome).

Sequential testing: looks at a fixed schedule of cumulative repeats
(``looks``), the error budget alpha split equally over them (Bonferroni
alpha spending; valid whatever the correlation between looks, conservative
because they are positively correlated), and each bar's decision latched
once made.  So P(a wrong pass) <= alpha and P(a wrong fail) <= alpha for
every bar, however early the check stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from ..errors import HwloopError

SCOPES = ("population", "dataset")


@dataclass(frozen=True)
class Estimate:
    """A statistic, its standard error, and what it was computed from."""

    value: float
    se: float
    units: int          # samples in the statistic
    repeats: int

    def bounds(self, z: float) -> tuple[float, float]:
        return self.value - z * self.se, self.value + z * self.se


def estimate(influence: np.ndarray, scope: str, value: float | None = None, span: float | None = 1.0,
             z: float = 0.0) -> Estimate:
    """The estimate from per-(repeat, sample) values ``influence`` (R, n).

    ``value`` defaults to their mean (a statistic that is a mean); a
    nonlinear statistic passes its value and its linearisation (delta method)
    as ``influence``.  ``span``: the range of one observation, for the floor
    of the standard error (None: no floor).  ``z``: the quantile the floor is
    scaled with.
    """
    v = np.asarray(influence, dtype=np.float64)
    r, n = v.shape
    val = float(v.mean()) if value is None else float(value)
    if n == 0:
        return Estimate(val, math.inf, 0, r)
    if scope == "population":
        var = float(v.mean(axis=0).var(ddof=1)) / n if n > 1 else math.inf
        units = n
    elif scope == "dataset":
        var = float(v.var(axis=0, ddof=1).sum()) / (n * n * r) if r > 1 else math.inf
        units = n * r
    else:
        raise HwloopError(f"scope {scope!r}: not one of {', '.join(SCOPES)}")
    se = math.sqrt(var)
    if span is not None:
        se = max(se, z * span / units)
    return Estimate(val, se, n, r)


def looks(max_repeats: int, first: int = 4, sequential: bool = True) -> tuple[int, ...]:
    """Cumulative repeats at which the data are looked at: first, 2 first, 4 first, ..., max_repeats.

    The first look has 4 repeats: with 2, the per-sample noise variances are too rough (their errors
    correlate with the estimate) and the bound errs about 1.5 times as often as stated.
    """
    if max_repeats < 1:
        raise HwloopError(f"repeats must be at least 1, got {max_repeats}")
    if not sequential:
        return (max_repeats,)
    out, r = [], max(1, first)
    while r < max_repeats:
        out.append(r)
        r *= 2
    return (*out, max_repeats)


def quantile(alpha: float) -> float:
    """z with P(N(0,1) > z) = alpha."""
    return float(-ndtri(alpha))


@dataclass
class BarState:
    """One bar's running decision: ``pass``/``fail`` once decided (latched), else ``undecided``."""

    name: str
    direction: str           # "min": the statistic must reach the threshold; "max": stay at or below it
    threshold: float
    decision: str = "undecided"
    estimate: Estimate | None = None
    lower: float = math.nan
    upper: float = math.nan
    decided_at: int | None = None    # repeats at the look that decided

    def update(self, est: Estimate, z_pass: float, z_fail: float) -> None:
        """Look at ``est``: the bound on the passing side must clear the bar with z_pass, on the failing side z_fail."""
        if self.decision != "undecided":
            return
        self.estimate = est
        self.lower, self.upper = est.bounds(z_pass)
        fail_lo, fail_hi = est.bounds(z_fail)
        if self.direction == "min":
            passed, failed = self.lower >= self.threshold, fail_hi < self.threshold
        else:
            passed, failed = self.upper <= self.threshold, fail_lo > self.threshold
        if passed or failed:
            self.decision = "pass" if passed else "fail"
            self.decided_at = est.repeats

    @property
    def bound(self) -> float:
        """The bound that is compared with the bar on the passing side."""
        return self.lower if self.direction == "min" else self.upper


def overall(bars: list[BarState]) -> str:
    """``fail`` if any bar failed, ``pass`` if all passed, else ``undecided``."""
    if any(b.decision == "fail" for b in bars):
        return "fail"
    return "pass" if all(b.decision == "pass" for b in bars) else "undecided"


def look_quantiles(alpha: float, n_looks: int, n_bars: int) -> tuple[float, float]:
    """(z_pass, z_fail) at every look: alpha / looks per look; a fail also splits alpha over the bars.

    A pass needs every bar to pass, so a wrong overall pass needs a wrong pass
    of a violated bar: alpha per bar suffices (intersection-union).  A wrong
    fail can come from any bar: alpha / bars each.
    """
    if not 0.0 < alpha < 0.5:
        raise HwloopError(f"confidence must lie in (0.5, 1), got {1 - alpha}")
    a = alpha / n_looks
    return quantile(a), quantile(a / max(1, n_bars))
