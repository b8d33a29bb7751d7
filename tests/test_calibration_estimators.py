"""What the calibration estimators share: the weighted line (against scipy), the fitted ADC, learned values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from hwloop.calibration.adc import ADCFit
from hwloop.calibration.estimators import Learned, weighted_line
from hwloop.calibration.fit import DriftFit, GainOffsetFit, NoiseFit
from hwloop.calibration.groups import groups
from hwloop.calibration.measure import Block, Measurements
from hwloop.calibration.plan import ChipInfo, design_plan

CHIP = ChipInfo("Test,T-8,SN1,1.0", 8, 8, 512, 1000, (-1.0, 1.0), 1.0, 4.0, (-4.0, 4.0), 16, ("linear",))


def measured(seed: int, D_A: float = 1e-3) -> Measurements:
    """Linear-mode blocks of a chip with unit gains, no offsets and additive noise D_A."""
    plan = design_plan(CHIP, 20_000)
    rng = np.random.default_rng(seed)
    blocks = [Block(p, (np.array(p.levels)[None, :, None] + rng.normal(0, np.sqrt(D_A), (p.repeats, len(p.levels), 8)))
                    .astype(np.float32), float(k), 25.0) for k, p in enumerate(plan.probes)]
    return Measurements(plan, blocks)


def test_weighted_line_is_scipys_weighted_least_squares_per_column():
    rng = np.random.default_rng(0)
    x = np.linspace(-2, 2, 21)
    sd = rng.uniform(0.5, 2.0, (21, 3))
    y = 0.7 * x[:, None] - 0.2 + 3.0 * sd * rng.standard_normal((21, 3))   # scatter 3x the stated errors
    line = weighted_line(x, y, 1 / sd**2)
    for j in range(3):
        params, cov = curve_fit(lambda x, b, a: a * x + b, x, y[:, j], sigma=sd[:, j], absolute_sigma=False)
        assert line["chi2"][j] > 1      # so the errors are scaled by it, as scipy's relative sigmas are
        np.testing.assert_allclose([line["intercept"][j], line["slope"][j]], params, rtol=1e-6)   # scipy iterates
        np.testing.assert_allclose([line["intercept_stderr"][j], line["slope_stderr"][j]], np.sqrt(np.diag(cov)),
                                   rtol=1e-6)
    unscaled = weighted_line(x, y[:, 0], 1 / sd[:, 0] ** 2, inflate=False)
    assert unscaled["slope_stderr"] < line["slope_stderr"][0]


def test_estimators_take_the_fitted_adc_and_none_means_ideal():
    m = measured(1)
    assert [g.level for g in m.groups()] == [g.level for g in groups(m)] and m.groups()
    adc = ADCFit.known((-4.0, 4.0), 8.0 / 63)
    assert adc.bits_ == 6 and adc.quantisation_variance_ == pytest.approx((8.0 / 63) ** 2 / 12)
    ideal = GainOffsetFit().fit(m)
    np.testing.assert_array_equal(ideal.gain_, GainOffsetFit(ADCFit.known()).fit(m).gain_)
    assert np.all(np.abs(ideal.gain_ - 1) <= 4 * ideal.gain_stderr_)
    # a range that puts the top levels on the rail leaves them out: fewer levels, the same line
    narrow = GainOffsetFit(ADCFit.known((-4.0, 2.0))).fit(m)
    assert len(narrow.levels_) < len(ideal.levels_) and np.all(np.abs(narrow.gain_ - 1) <= 4 * narrow.gain_stderr_)
    with pytest.raises(TypeError, match=r"ADCFit.known\(output_range, step\)"):   # the former (range, step) call
        GainOffsetFit((-4.0, 4.0)).fit(m)


def test_learned_values_are_declared_and_read_after_fit():
    declared = {k for k, v in vars(NoiseFit).items() if isinstance(v, Learned)}
    assert declared == {f"{t}_{e}" for t in ("D_A", "D_M", "D_AC", "D_MC", "shot") for e in ("", "stderr_")}
    assert {k for k, v in vars(DriftFit).items() if isinstance(v, Learned)} >= {"offset_per_s_", "gain_per_K_stderr_"}
    nf = NoiseFit(np.ones(8), np.zeros(8))
    assert nf.gains is not None and nf.adc is None and nf.sheppard      # settings stored as given
    with pytest.raises(AttributeError, match="NoiseFit.D_A_: not fitted yet"):
        nf.D_A_
    nf.fit(measured(2, D_A=1e-3))
    assert nf.D_A_ == nf.intensities_["D_A"] and abs(nf.D_A_ - 1e-3) <= 4 * nf.D_A_stderr_
    drift = DriftFit().fit(measured(3))
    assert drift.offset_per_s_ == drift.rates_["offset_per_s"] and not drift.significant_
