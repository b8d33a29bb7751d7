"""Calibration plan, store and estimators on data with known truth (fast; no bench).

``synthesise`` below is a TEST HELPER: an independent numpy implementation of the
documented chip model (docs/calibration.md), so the estimators are checked
against numbers that hwloop's own physics did not produce.  The end-to-end
checks through the simulated bench are in test_calibration_bench.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.calibration.fit import ADCFit, DriftFit, GainOffsetFit, NoiseFit, TransferFit
from hwloop.calibration.measure import Block, CalibrationStore, Measurements
from hwloop.calibration.plan import ChipInfo, design_plan
from hwloop.errors import HwloopError
from hwloop.layer import activate

CHIP = ChipInfo("Test,T-16,SN1,1.0", 16, 16, 512, 1000, (-1.0, 1.0), 1.0, 4.0, (-4.0, 4.0), 16,
                ("linear", "sigmoid", "tanh"))


def synthesise(plan, rng, D=(0, 0, 0, 0), gains=None, offsets=None, step=0.0, drift_offset_per_s=0.0,
               transfer=(1.0, 1.0)):
    """TEST HELPER: y = g*scale*f(slope*a) + o + drift*t, then y(1+xiM+xiMC) + xiA + xiAC, then rounding."""
    n = plan.n_out
    g = np.ones(n) if gains is None else gains
    o = np.zeros(n) if offsets is None else offsets
    D_A, D_M, D_AC, D_MC = D
    blocks = []
    for k, p in enumerate(plan.probes):
        t = float(k)
        a = np.array(p.levels)[None, :, None]
        x = g * transfer[1] * activate(p.activation, transfer[0] * a) + o + drift_offset_per_s * t
        shape = (p.repeats, len(p.levels), n)
        y = (x * (1 + rng.normal(0, np.sqrt(D_M), shape) + rng.normal(0, np.sqrt(D_MC), shape[:2] + (1,)))
             + rng.normal(0, np.sqrt(D_A), shape) + rng.normal(0, np.sqrt(D_AC), shape[:2] + (1,)))
        if step:
            y = np.round(y / step) * step
        blocks.append(Block(p, y.astype(np.float32), t, 25.0))
    return Measurements(plan, blocks)


# -- plan ----------------------------------------------------------------------------------
@pytest.mark.parametrize("input_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_plan_stays_inside_the_chip(input_range):
    chip = ChipInfo(**{**CHIP.to_dict(), "input_range": input_range, "max_repeats": 300})
    plan = design_plan(chip, 50_000, seed=3)
    assert plan.summary() == design_plan(chip, 50_000, seed=3).summary()  # a pure function of its inputs
    total = sum(p.evaluations for p in plan.probes)
    assert 0.9 * 50_000 <= total <= 50_000
    levels = plan.summary()["level_values"]
    assert 0.0 in levels and min(levels) < 0 < max(levels)   # signed levels even from non-negative inputs
    assert max(levels) <= 0.7 * chip.output_range[1] + 1e-9  # 15% margin to each ADC rail
    for act in ("linear", "sigmoid"):
        w = plan.layer(act).weight
        assert np.abs(w).max() <= chip.weight_max
    for p in plan.probes:
        x = plan.inputs(p.levels)
        assert x.min() >= input_range[0] and x.max() <= input_range[1]
        assert p.repeats <= chip.max_repeats and len(p.levels) <= chip.max_batch
        # the pre-activation every neuron sees is the level asked for
        a = x[0] @ plan.layer(p.activation).weight.T
        assert np.allclose(a, np.array(p.levels)[:, None], atol=1e-5)


def test_plan_refuses_what_it_cannot_do():
    with pytest.raises(HwloopError, match="budget 10: too small"):
        design_plan(CHIP, 10)
    with pytest.raises(HwloopError, match="unusable ranges"):
        design_plan(ChipInfo(**{**CHIP.to_dict(), "output_range": (1.0, 1.0)}), 10_000)
    with pytest.raises(HwloopError, match="no LINear"):
        design_plan(ChipInfo(**{**CHIP.to_dict(), "activations": ("sigmoid",)}), 10_000)


# -- estimators on synthetic data ----------------------------------------------------------
def test_adc_step_and_bits_from_the_codes():
    plan = design_plan(ChipInfo(**{**CHIP.to_dict(), "activations": ("linear",)}), 20_000)
    step = 8.0 / (2**10 - 1)
    rng = np.random.default_rng(0)
    m = synthesise(plan, rng, D=(1e-3, 0, 0, 0), step=step)
    fit = ADCFit((-4.0, 4.0), 10).fit(m)
    assert fit.step_ == pytest.approx(step, rel=1e-6) and fit.bits_ == 10
    assert fit.quantisation_variance_ == pytest.approx(step**2 / 12, rel=1e-5)
    assert ADCFit((-4.0, 4.0), 10).fit(synthesise(plan, rng, D=(1e-3, 0, 0, 0))).step_ == 0.0  # no grid


def test_noise_terms_gains_and_offsets_on_synthetic_data():
    plan = design_plan(ChipInfo(**{**CHIP.to_dict(), "activations": ("linear",)}), 100_000)
    rng = np.random.default_rng(1)
    g, o = 1 + 0.05 * rng.standard_normal(16), 0.03 * rng.standard_normal(16)
    D = (2e-4, 5e-4, 5e-5, 1e-4)
    m = synthesise(plan, rng, D=D, gains=g, offsets=o)
    go = GainOffsetFit(ADCFit.known((-4.0, 4.0))).fit(m)
    assert np.all(np.abs(go.gain_ - g) <= 4 * go.gain_stderr_)
    assert np.all(np.abs(go.offset_ - o) <= 4 * go.offset_stderr_)
    nf = NoiseFit(go.gain_, go.offset_, ADCFit.known((-4.0, 4.0))).fit(m)
    for k, truth in zip(("D_A", "D_M", "D_AC", "D_MC"), D):
        assert abs(nf.intensities_[k] - truth) <= 4 * nf.stderr_[k], k
        assert abs(nf.intensities_[k] / truth - 1) < 0.1, k
    assert not nf.shot_fitted_


def test_quantised_noise_is_corrected_by_sheppard():
    """std = 1.5 steps: the raw variance is too large by step^2/12; the corrected fit is not."""
    plan = design_plan(ChipInfo(**{**CHIP.to_dict(), "activations": ("linear",)}), 100_000)
    step = 4.0 / 63
    m = synthesise(plan, np.random.default_rng(2), D=((1.5 * step) ** 2, 0, 0, 0), step=step)
    adc = ADCFit.known((-4.0, 4.0), step)
    go = GainOffsetFit(adc).fit(m)
    nf = NoiseFit(go.gain_, go.offset_, adc).fit(m)
    raw = NoiseFit(go.gain_, go.offset_, adc, sheppard=False).fit(m)
    truth = (1.5 * step) ** 2
    assert abs(nf.D_A_ - truth) <= 4 * nf.D_A_stderr_
    assert raw.D_A_ - truth > 10 * raw.D_A_stderr_   # without the correction the bias is obvious


def test_drift_of_the_offset_is_found_and_absent_drift_is_not():
    plan = design_plan(ChipInfo(**{**CHIP.to_dict(), "activations": ("linear",)}), 100_000)
    rng = np.random.default_rng(3)
    drifting = DriftFit().fit(synthesise(plan, rng, D=(1e-4, 0, 0, 0), drift_offset_per_s=2e-3))
    assert drifting.significant_
    assert abs(drifting.offset_per_s_ - 2e-3) <= 4 * drifting.offset_per_s_stderr_
    steady = DriftFit().fit(synthesise(plan, rng, D=(1e-4, 0, 0, 0)))
    assert not steady.significant_


def test_transfer_family_slope_and_scale():
    plan = design_plan(CHIP, 60_000)
    m = synthesise(plan, np.random.default_rng(4), D=(1e-4, 0, 0, 0), transfer=(0.8, 1.2))
    res = TransferFit(0.0, offset_sem=1e-3).fit(m).results_
    for mode in ("sigmoid", "tanh"):
        assert res[mode]["function"] == mode   # tanh and a shifted sigmoid are told apart
        assert res[mode]["slope"] == pytest.approx(0.8, rel=0.01)
        assert res[mode]["scale"] == pytest.approx(1.2, rel=0.01)


# -- the store -----------------------------------------------------------------------------
def test_store_keeps_only_marked_blocks_and_refuses_another_plan(tmp_path):
    plan = design_plan(ChipInfo(**{**CHIP.to_dict(), "max_repeats": 100}), 5_000)
    store = CalibrationStore.create(tmp_path / "c.zarr", plan, {"idn": CHIP.idn})
    ys = [np.full((p.repeats, len(p.levels), plan.n_out), k, np.float32) for k, p in enumerate(plan.probes)]
    store.write_block(0, ys[0], 0.5, 25.0)
    store.write_block(2, ys[2], 1.5, 25.1)
    # a block whose data landed but whose marker did not (a kill in between) does not count
    store.root["blocks"].create_array("1", shape=ys[1].shape, dtype="float32")[...] = ys[1]
    again = CalibrationStore.resume(tmp_path / "c.zarr", plan)
    got = again.measurements()
    assert [b.probe.index for b in got.blocks] == [0, 2] and not again.complete
    assert np.array_equal(got.blocks[1].y, ys[2]) and got.blocks[1].temperature == 25.1
    with pytest.raises(HwloopError, match="another plan"):
        CalibrationStore.resume(tmp_path / "c.zarr", design_plan(CHIP, 6_000))
    with pytest.raises(HwloopError, match="exists"):
        CalibrationStore.create(tmp_path / "c.zarr", plan, {})


def test_resumed_calibration_of_a_keyed_device_gives_the_identical_profile(tmp_path):
    """The emulator draws from (seed, probe) keys, so an interrupted and resumed calibration must give the
    same numbers as an uninterrupted one; its reprogramming keeps the same gains, so the two sessions merge."""
    from hwloop.calibration import calibrate
    from hwloop.calibration.measure import Chip
    from hwloop.devices import Emulator
    from hwloop.profiles import parse_profile

    prof = parse_profile("version: 1\nprovenance: {source: hand-written}\n"
                         "noise: {D_A: 2.0e-4, D_M: 5.0e-4, D_AC: 5.0e-5, D_MC: 1.0e-4}\n"
                         "gain_offset: {gain: 0.05, offset: 0.03}\nadc: {bits: 16, range: [-4.0, 4.0]}\n")

    def chip():
        return Chip(Emulator(prof), CHIP)

    whole, _, _ = calibrate(chip(), tmp_path / "a.yaml", store=tmp_path / "a.zarr", budget=40_000, seed=5)
    none, _, part = calibrate(chip(), tmp_path / "b.yaml", store=tmp_path / "b.zarr", budget=40_000, seed=5,
                              stop_after=2)
    assert none is None and 0 < len(part.blocks) < len(part.plan.probes)
    resumed, _, _ = calibrate(chip(), tmp_path / "b.yaml", store=tmp_path / "b.zarr", budget=40_000, seed=5,
                              resume=True)
    for section in ("noise", "gain_offset", "adc"):
        assert resumed.data[section] == whole.data[section], section
    assert resumed.data.get("transfer") == whole.data.get("transfer")
    assert resumed.data["uncertainty"]["noise"] == whole.data["uncertainty"]["noise"]
    assert resumed.provenance["per_neuron"] == whole.provenance["per_neuron"]
