"""The midpoint noise level mu: where accuracy is halfway between clean and chance.

Found at the first crossing of the mean accuracy curve, by linear interpolation
in log sigma (linear in sigma where a grid point is 0).  The confidence interval
comes from a bootstrap over the repeats with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Midpoint:
    """``value`` (inf when not reached) with a bootstrap interval [lo, hi] (NaN: one repeat, no interval)."""

    value: float
    lo: float
    hi: float

    @property
    def reached(self) -> bool:
        return bool(np.isfinite(self.value))

    def __str__(self) -> str:
        if not self.reached:
            return "not reached"
        if np.isnan(self.lo):
            return f"{self.value:.4g} (one repeat: no interval)"
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def crossing(sigmas: np.ndarray, acc: np.ndarray, level: float) -> float:
    """First sigma where ``acc`` (one value per sigma) falls below ``level``; inf if never."""
    below = np.flatnonzero(acc < level)
    if len(below) == 0:
        return float("inf")
    i = int(below[0])
    if i == 0:
        return float(sigmas[0])
    s0, s1, a0, a1 = float(sigmas[i - 1]), float(sigmas[i]), float(acc[i - 1]), float(acc[i])
    t = (a0 - level) / (a0 - a1)
    if s0 > 0 and s1 > 0:
        return float(np.exp(np.log(s0) + t * (np.log(s1) - np.log(s0))))
    return s0 + t * (s1 - s0)


def midpoint(sigmas: np.ndarray, acc: np.ndarray, clean: float, n_classes: int,
             n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> Midpoint:
    """Midpoint of ``acc`` (sigma, repeat) between ``clean`` and chance 1/``n_classes``."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    acc = np.asarray(acc, dtype=np.float64).reshape(len(sigmas), -1)
    order = np.argsort(sigmas)
    sigmas, acc = sigmas[order], acc[order]
    level = 0.5 * (clean + 1.0 / n_classes)
    value = crossing(sigmas, acc.mean(axis=1), level)
    r = acc.shape[1]
    if r < 2:                       # nothing to resample: no interval rather than a zero-width one
        return Midpoint(value, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, r, size=(n_boot, r))
    boots = np.array([crossing(sigmas, acc[:, p].mean(axis=1), level) for p in picks])
    # no interpolation between quantiles: bootstraps that never cross are inf
    lo = np.quantile(boots, (1 - ci) / 2, method="lower")
    hi = np.quantile(boots, (1 + ci) / 2, method="higher")
    return Midpoint(value, float(lo), float(hi))


def at_chance(clean: float, n_classes: int, n_samples: int | None, z: float = 3.0) -> bool:
    """Whether ``clean`` accuracy is within ``z`` binomial standard errors of chance 1/``n_classes``
    (on ``n_samples`` test samples; unknown: at or below chance).  There the midpoint, halfway from
    clean to chance, is noise: the curve has nowhere to fall."""
    chance = 1.0 / n_classes
    margin = z * np.sqrt(chance * (1 - chance) / n_samples) if n_samples else 0.0
    return bool(clean <= chance + margin)
