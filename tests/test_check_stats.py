"""The gate's error rates, measured over many seeds on a cheap synthetic evaluator.

Each trial draws a population of samples (85% always right, 5% always wrong,
10% right with a probability uniform in [0, 1]: true accuracy 0.9) and
evaluates them with fresh Bernoulli noise per repeat, through the same gate
(``run_gate``) that checks real models.  Bounds on counts come from the
binomial distribution of N trials (one-sided, 0.1% quantiles), so a test
fails by chance about once in a thousand runs at worst, and never with these
fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from hwloop.check.bars import Bars, Observations
from hwloop.check.gate import run_gate
from hwloop.check.stats import Estimate, estimate, looks, quantile

TRUE = 0.9
N_SAMPLES = 300
TRIALS = 300
ALPHA = 0.05


def population(rng) -> np.ndarray:
    """Per-sample probability of a right answer; the population mean is exactly TRUE."""
    kind = rng.random(N_SAMPLES)
    q = np.where(kind < 0.85, 1.0, 0.0)
    noisy = kind >= 0.90
    q[noisy] = rng.random(noisy.sum())
    return q


def synthetic(q: np.ndarray, rng):
    """(draw, observations): outputs (r, n, 2) whose argmax is the label 0 with probability q."""
    def draw(look: int, r: int) -> np.ndarray:
        right = rng.random((r, len(q))) < q[None]
        return np.stack([right, ~right], axis=-1).astype(np.float32)
    return draw, Observations(np.zeros(len(q), np.int64), (q < 0.5).astype(np.int64))


def gate_rates(bar: float, scope: str, max_repeats: int = 16, fixed_q: bool = False, **bars):
    """Counts of pass, fail, undecided and the mean repeats over TRIALS seeded trials."""
    counts = {"pass": 0, "fail": 0, "undecided": 0}
    used = []
    q0 = population(np.random.default_rng(999))
    for seed in range(TRIALS):
        rng = np.random.default_rng(seed)
        q = q0 if fixed_q else population(rng)
        draw, obs = synthetic(q, rng)
        out = run_gate(draw, obs, Bars(min_accuracy=bar, **bars), scope=scope, confidence=1 - ALPHA,
                       schedule=looks(max_repeats))
        counts[out.decision] += 1
        used.append(out.repeats)
    return counts, float(np.mean(used))


MAX_WRONG = binom.ppf(0.999, TRIALS, ALPHA)   # most wrong decisions compatible with a rate <= ALPHA


def _true(scope: str) -> float:
    return TRUE if scope == "population" else population(np.random.default_rng(999)).mean()


@pytest.mark.parametrize("scope", ["population", "dataset"])
def test_just_above_the_bar_passes_and_never_fails_more_often_than_alpha(scope):
    """0.5 points above the bar.  Dataset scope (only noise random): passes at the stated rate (>= 1 - alpha)
    within 64 repeats.  Population scope: 300 samples cannot resolve 0.5 points, so mostly undecided."""
    counts, _ = gate_rates(_true(scope) - 0.005, scope, max_repeats=64, fixed_q=scope == "dataset")
    assert counts["fail"] <= MAX_WRONG, counts
    if scope == "dataset":
        assert counts["pass"] >= TRIALS - MAX_WRONG, counts


@pytest.mark.parametrize("scope", ["population", "dataset"])
def test_just_below_the_bar_fails_and_never_passes_more_often_than_alpha(scope):
    counts, _ = gate_rates(_true(scope) + 0.005, scope, max_repeats=64, fixed_q=scope == "dataset")
    assert counts["pass"] <= MAX_WRONG, counts
    if scope == "dataset":
        assert counts["fail"] >= TRIALS - MAX_WRONG, counts


@pytest.mark.parametrize("scope", ["population", "dataset"])
def test_exactly_at_the_bar_both_errors_stay_within_alpha(scope):
    """The worst case of the sequential gate: every pass and every fail is wrong, each at most alpha."""
    counts, _ = gate_rates(_true(scope), scope, max_repeats=64, fixed_q=scope == "dataset")
    assert counts["pass"] <= MAX_WRONG and counts["fail"] <= MAX_WRONG, counts


def test_at_the_bar_a_single_look_errs_at_the_nominal_rate_and_a_naive_interval_does_not():
    """One look at R repeats: the two-way interval's wrong passes are near alpha (not just below it);
    treating the R x n outcomes as independent trials (binomial) errs far more often."""
    z = quantile(ALPHA)
    ours = naive = 0
    for seed in range(TRIALS):
        rng = np.random.default_rng(seed)
        draw, obs = synthetic(population(rng), rng)
        right = (draw(0, 8).argmax(-1) == 0).astype(float)
        est = estimate(right, "population")
        ours += est.value - z * est.se >= TRUE
        p = right.mean()
        naive += p - z * np.sqrt(p * (1 - p) / right.size) >= TRUE
    assert binom.ppf(0.001, TRIALS, ALPHA / 2) <= ours <= MAX_WRONG, ours
    assert naive > binom.ppf(0.999, TRIALS, 2 * ALPHA), naive


def test_a_wide_margin_stops_early_and_a_narrow_one_uses_more_repeats():
    wide, used_wide = gate_rates(0.80, "dataset", max_repeats=64, fixed_q=True)
    narrow, used_narrow = gate_rates(population(np.random.default_rng(999)).mean() - 0.004, "dataset",
                                     max_repeats=64, fixed_q=True)
    assert wide["pass"] == TRIALS and used_wide == 4          # decided at the first look
    assert used_narrow > 2 * used_wide and narrow["fail"] <= MAX_WRONG


def test_several_bars_fail_when_any_fails_and_pass_only_when_all_pass():
    rng = np.random.default_rng(0)
    draw, obs = synthetic(population(rng), rng)
    out = run_gate(draw, obs, Bars(min_accuracy=0.5, max_flip_rate=0.9), scope="population", confidence=0.95,
                   schedule=looks(16))
    assert out.decision == "pass" and [b.decision for b in out.bars] == ["pass", "pass"]
    draw, obs = synthetic(population(rng), rng)
    out = run_gate(draw, obs, Bars(min_accuracy=0.99, max_flip_rate=0.9), scope="population", confidence=0.95,
                   schedule=looks(16))
    assert out.decision == "fail" and out.bars[0].decision == "fail" and out.repeats == 4


def test_variance_parts_and_floor():
    v = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])        # (repeat, sample)
    pop = estimate(v, "population")
    assert pop.value == pytest.approx(0.625)
    assert pop.se ** 2 == pytest.approx(np.var([1, 0, 0.5, 1], ddof=1) / 4)
    ds = estimate(v, "dataset")
    assert ds.se ** 2 == pytest.approx((0 + 0 + 0.5 + 0) / (16 * 2))
    flat = estimate(np.ones((3, 50)), "population", z=2.0)           # nothing moved: not claimed exact
    assert flat.se == pytest.approx(2.0 / 50)
    assert estimate(np.ones((1, 5)), "dataset").se == np.inf        # one repeat says nothing about noise
    assert isinstance(pop, Estimate) and looks(100) == (4, 8, 16, 32, 64, 100) and looks(5, sequential=False) == (5,)
