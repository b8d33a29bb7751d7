"""Midpoint noise level and the repetition planner: exact values on curves whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.errors import HwloopError
from hwloop.walking.midpoint import crossing, midpoint
from hwloop.walking.planner import SCHEMES, allocate, evaluate_plans
from hwloop.walking.evaluate import SiteModel
from hwloop.walking.sites import Noise


def test_midpoint_interpolates_in_log_sigma():
    sigmas = np.array([0.1, 1.0, 10.0, 100.0])
    acc = np.array([0.9, 0.8, 0.3, 0.1])           # halfway between 0.9 and 0.1 is 0.5
    # first crossing between 1 and 10, t = (0.8 - 0.5) / (0.8 - 0.3) = 0.6 -> 10 ** 0.6
    assert crossing(sigmas, acc, 0.5) == pytest.approx(10 ** 0.6)
    m = midpoint(sigmas, acc[:, None], clean=0.9, n_classes=10)
    assert m.value == pytest.approx(10 ** 0.6) and m.reached
    assert np.isnan(m.lo) and np.isnan(m.hi) and str(m).endswith("(one repeat: no interval)")  # nothing to resample
    # linear interpolation where a grid point is 0
    assert crossing(np.array([0.0, 2.0]), np.array([1.0, 0.0]), 0.5) == pytest.approx(1.0)


def test_midpoint_first_crossing_not_reached_and_interval():
    sigmas = np.logspace(-1, 2, 4)
    # dips below, recovers, dips again: the first crossing counts
    assert crossing(sigmas, np.array([0.9, 0.4, 0.9, 0.1]), 0.5) < sigmas[1]
    never = midpoint(sigmas, np.full((4, 3), 0.85), clean=0.9, n_classes=10)
    assert not never.reached and str(never) == "not reached"
    # repeats scattered around a curve: the bootstrap interval holds the point estimate
    rng = np.random.default_rng(0)
    base = np.array([0.9, 0.8, 0.3, 0.1])[:, None]
    acc = np.clip(base + 0.05 * rng.standard_normal((4, 8)), 0, 1)
    m = midpoint(sigmas, acc, clean=0.9, n_classes=10, seed=1)
    assert m.lo <= m.value <= m.hi and m.lo < m.hi
    assert m == midpoint(sigmas, acc, clean=0.9, n_classes=10, seed=1)   # fixed seed, same interval


def test_allocations_are_integer_at_least_one_and_sum_to_budget():
    mu = np.array([0.5, 2.0, 4.0, 8.0, np.inf])
    for scheme in SCHEMES:
        for budget in (5, 7, 23, 100):
            k = allocate(mu, budget, scheme)
            assert k.dtype.kind == "i" and k.min() >= 1 and k.sum() == budget, (scheme, budget)
    assert list(allocate(mu, 10, "uniform")) == [2, 2, 2, 2, 2]
    # 1/mu^2 with mu = 1, 2: weights 4:1 of a budget of 10 -> 8 and 2
    assert list(allocate(np.array([1.0, 2.0]), 10, "inv_mu2")) == [8, 2]
    assert list(allocate(np.array([1.0, 4.0]), 9, "inv_sqrt_mu")) == [6, 3]
    # the most fragile site gets the most under every non-uniform scheme; "not reached" the least
    for scheme in SCHEMES[1:]:
        k = allocate(mu, 40, scheme)
        assert k[0] == k.max() and k[-1] == k.min(), scheme
    with pytest.raises(HwloopError, match="at least one"):
        allocate(mu, 4, "uniform")
    with pytest.raises(HwloopError, match="unknown"):
        allocate(mu, 10, "cubic")


def test_plans_run_under_global_noise_with_averaged_copies(handbuilt_onnx, digits):
    model = SiteModel(handbuilt_onnx)
    mu = np.array([0.5, 1.0, 1.0, 2.0, 2.0, 4.0])
    res = evaluate_plans(model, digits.head(200), mu, budget=12, noise=Noise("additive", 2.0),
                         schemes=("uniform", "inv_mu2"), repeats=2, seed=0)
    assert [r.scheme for r in res] == ["uniform", "inv_mu2"]
    assert all(r.allocation.sum() == 12 and len(r.accuracy) == 2 for r in res)
    again = evaluate_plans(model, digits.head(200), mu, 12, Noise("additive", 2.0), ("inv_mu2",), 2, 0)
    np.testing.assert_array_equal(again[0].accuracy, res[1].accuracy)
    # with an enormous budget every site averages its noise away: the clean accuracy comes back
    clean = np.mean(np.argmax(model.clean(digits.x[:200])[model.output], 1) == digits.y[:200])
    big = evaluate_plans(model, digits.head(200), mu, 6 * 400, Noise("additive", 2.0), ("uniform",), 1, 0)
    assert big[0].mean == pytest.approx(clean, abs=0.02)
