"""Calibration to a stated precision (`--target-precision`): sequential design from the Fisher information.

Against the simulated bench (real pyvisa, real TCP): a 1% request is met,
a loose request costs fewer evaluations than the fixed default plan, and an
impossible one stops at the budget with a clear message.
"""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.calibration import DEFAULT_BUDGET, calibrate, open_chip
from hwloop.calibration.precision import (Timing, calibrate_to_precision, evaluations_needed, level_information,
                                          parse_targets)
from hwloop.errors import HwloopError
from hwloop.profiles import parse_profile

pytest_plugins = ["tests.bench_fixtures"]

HIDDEN = ("version: 1\nprovenance: {source: hand-written}\n"
          "noise: {D_A: 2.0e-4, D_M: 5.0e-4, D_AC: 5.0e-5, D_MC: 1.0e-4}\ngain_offset: {gain: 0.05, offset: 0.03}\n")
TRUTH = {"D_A": 2e-4, "D_M": 5e-4, "D_AC": 5e-5, "D_MC": 1e-4}
CHIP = dict(max_inputs=16, max_outputs=16, activations=("LINear",))


def run(make_bench, tmp_path, target, tag, seed=1, **kw):
    bench = make_bench(parse_profile(HIDDEN), seed=seed, **CHIP)
    chip = open_chip(bench.resource)
    try:
        return calibrate_to_precision(chip, tmp_path / f"{tag}.yaml", store=tmp_path / f"{tag}.zarr",
                                      targets=target, **kw)
    finally:
        chip.device.close()


def test_one_percent_on_every_intensity_is_reached(make_bench, tmp_path):
    r = run(make_bench, tmp_path, 0.01, "p1")
    assert r.reached, r.message
    assert "target precision reached" in r.message and len(r.stages) >= 2   # the pilot alone is not enough
    nf = r.fit.noise
    for k, t in TRUTH.items():
        assert nf.stderr_[k] / nf.intensities_[k] <= 0.01, (k, nf.stderr_[k] / nf.intensities_[k])
        assert abs(nf.intensities_[k] - t) <= 4 * nf.stderr_[k], (k, nf.intensities_[k], nf.stderr_[k])
    assert r.evaluations == r.measurements.evaluations
    # the extension stages are in the store; a refit (no chip) reads them too and gives the same profile
    assert (tmp_path / "p1.zarr" / "stages" / "1").is_dir()
    from hwloop.calibration import refit

    again, _ = refit(tmp_path / "p1.zarr", tmp_path / "again.yaml")
    assert again.data["noise"] == r.profile.data["noise"]
    assert again.provenance["measurements"] == r.profile.provenance["measurements"]


def test_loose_request_costs_fewer_evaluations_than_the_fixed_plan(make_bench, tmp_path):
    r = run(make_bench, tmp_path, "D_A=0.05,D_M=0.05", "loose")
    assert r.reached, r.message
    bench = make_bench(parse_profile(HIDDEN), seed=1, **CHIP)
    chip = open_chip(bench.resource)
    try:
        _, fixed, meas = calibrate(chip, tmp_path / "f.yaml", store=tmp_path / "f.zarr", seed=0)
    finally:
        chip.device.close()
    for k in ("D_A", "D_M"):   # the fixed plan meets the loose request too, at a far higher cost
        assert fixed.noise.stderr_[k] / fixed.noise.intensities_[k] <= 0.05
    assert r.evaluations < meas.evaluations / 4, (r.evaluations, meas.evaluations)


def test_impossible_request_stops_at_the_budget_with_a_clear_message(make_bench, tmp_path):
    r = run(make_bench, tmp_path, 0.001, "tight", budget=40_000)
    assert not r.reached
    assert r.evaluations <= 40_000
    assert r.message.startswith("target precision NOT reached for ")
    assert "stopped at the budget of 40,000 evaluations" in r.message and "more evaluations" in r.message
    assert (tmp_path / "tight.yaml").exists()   # what was measured is still fitted and written
    late = run(make_bench, tmp_path, 0.001, "late", max_seconds=0.01)   # the pilot alone takes longer
    assert not late.reached and len(late.stages) == 1
    assert "stopped at the time limit of 0.01 s" in late.message


def test_fisher_information_predicts_the_fitted_errors(make_bench, tmp_path):
    """The information the design step uses, summed over the pilot's levels, gives the standard errors
    the fit reports for that pilot (within 25%: the fit's own errors come from the sample covariances)."""
    bench = make_bench(parse_profile(HIDDEN), seed=2, **CHIP)
    chip = open_chip(bench.resource)
    try:
        _, fit, meas = calibrate(chip, tmp_path / "i.yaml", store=tmp_path / "i.zarr", budget=40_000, seed=0)
    finally:
        chip.device.close()
    nf, go = fit.noise, fit.gain_offset
    cols = [0, 1, 2, 3]
    info = np.zeros((4, 4))
    for b in meas.blocks:
        if b.probe.kind == "level":
            for a in b.probe.levels:
                info += b.probe.repeats * level_information(a, go.gain_, go.offset_, nf.intensities_,
                                                            fit.adc.quantisation_variance_, cols)
    predicted = np.sqrt(np.diag(np.linalg.inv(info)))
    fitted = np.array([nf.stderr_[k] for k in ("D_A", "D_M", "D_AC", "D_MC")])
    assert np.all(np.abs(predicted / fitted - 1) < 0.25), predicted / fitted
    # and the number of further evaluations it asks for is the one that meets the request
    one = info / sum(b.probe.evaluations for b in meas.blocks if b.probe.kind == "level")
    n = evaluations_needed(info, one, predicted / 2)
    assert n == pytest.approx(3 * info[0, 0] / one[0, 0], rel=0.01)   # 4x the information halves the errors


def test_cli_dry_run_and_target(make_bench, tmp_path, capsys):
    from hwloop.calibration.plan import design_plan
    from hwloop.cli import main

    bench = make_bench(parse_profile(HIDDEN), seed=1, **CHIP)
    assert main(["calibrate", "--resource", bench.resource, "--dry-run"]) == 0
    text = capsys.readouterr().out
    chip = open_chip(bench.resource)
    plan = design_plan(chip.info, DEFAULT_BUDGET, 0)
    chip.device.close()
    seconds = Timing().seconds(plan)   # 20 us per evaluation, 50 ms + 1 us per weight per programming
    layers = len({p.layer_key for p in plan.probes})   # norm probes at half scale, then the full-scale layer
    assert layers == 2
    assert seconds == pytest.approx(sum(p.evaluations for p in plan.probes) * 20e-6 + layers * (0.05 + 256e-6))
    assert f"{seconds:.3g} s at the chip's timing" in text and not (tmp_path / "x.yaml").exists()
    assert main(["calibrate", "--resource", bench.resource, "--dry-run", "--target-precision", "0.01"]) == 0
    assert "pilot of" in capsys.readouterr().out
    out = tmp_path / "t.yaml"
    assert main(["calibrate", "--resource", bench.resource, "--out", str(out), "--target-precision", "0.001",
                 "--budget", "30000"]) == 1
    text = capsys.readouterr().out
    assert "stopped at the budget of 30,000 evaluations" in text and "stage 1:" in text and out.exists()


def test_targets_are_checked():
    assert parse_targets("0.01") == dict.fromkeys(("D_A", "D_M", "D_AC", "D_MC", "shot"), 0.01)
    assert parse_targets("D_A=0.01, D_MC=0.05") == {"D_A": 0.01, "D_MC": 0.05}
    for bad, msg in (("D_X=0.1", "unknown term 'D_X'"), ("D_A=abc", "D_A needs a number"), ("1.5", "between 0 and 1"),
                     ("D_A", "D_A needs a number")):
        with pytest.raises(HwloopError, match=msg):
            parse_targets(bad)


def test_dry_run_with_a_prior_calibration_predicts_the_cost(make_bench, tmp_path, capsys):
    """An earlier calibration of the chip lets the dry run predict the extensions; the real run agrees."""
    import re

    from hwloop.cli import main

    bench = make_bench(parse_profile(HIDDEN), seed=3, **CHIP)
    prior = tmp_path / "prior.yaml"
    assert main(["calibrate", "--resource", bench.resource, "--out", str(prior), "--budget", "40000"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--resource", bench.resource, "--dry-run", "--target-precision", "0.01",
                 "--prior", str(prior)]) == 0
    text = capsys.readouterr().out
    predicted = int(re.search(r"prior calibration says: ([\d,]+) evaluations", text).group(1).replace(",", ""))
    chip = open_chip(bench.resource)
    try:
        r = calibrate_to_precision(chip, tmp_path / "p.yaml", store=tmp_path / "p.zarr", targets=0.01)
    finally:
        chip.device.close()
    assert r.reached and 0.67 <= r.evaluations / predicted <= 1.5, (r.evaluations, predicted)
