"""`hwloop calibrate diff`: a real change is flagged, an unchanged chip is not (false alarms bounded over seeds).

The many-seed checks use the fast synthetic path (``synthesise`` of
test_calibration_fit.py, an independent implementation of the chip model, fitted
by the real estimators and written by the real profile builder); one check runs
end to end through the simulated bench and the command line.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from hwloop.calibration.diff import compare_profiles
from hwloop.calibration.fit import fit_all
from hwloop.calibration.plan import ChipInfo, design_plan
from hwloop.calibration.profile_out import build_profile
from tests.test_calibration_fit import CHIP, synthesise

pytest_plugins = ["tests.bench_fixtures"]

SMALL = ChipInfo(**{**CHIP.to_dict(), "max_inputs": 8, "max_outputs": 8, "activations": ("linear",),
                    "output_bits": 12})
D = (2e-4, 5e-4, 5e-5, 1e-4)
SEEDS = 25


def calibrated(seed: int, D_A: float = D[0]) -> dict:
    """One calibration of the same 8-neuron chip (fixed gains and offsets), measured with noise keyed by seed."""
    plan = design_plan(SMALL, 20_000)
    g = 1 + 0.05 * np.random.default_rng(0).standard_normal(8)
    o = 0.03 * np.random.default_rng(1).standard_normal(8)
    m = synthesise(plan, np.random.default_rng(seed), D=(D_A, *D[1:]), gains=g, offsets=o, step=8 / 4095)
    return build_profile(fit_all(m), m)


def test_unchanged_chip_raises_few_false_alarms_and_a_real_change_is_found():
    """alpha = 1% family-wise: over 25 pairs of calibrations of one chip, expect 0.25 false alarms;
    3 or more happen with probability 0.002 when the standard errors are honest.  D_A raised by 5 combined
    standard errors is found with probability ~0.96 per pair (z ~ N(5, 1) against a threshold ~3.2)."""
    false_alarms, found = 0, 0
    for seed in range(SEEDS):
        old, new = calibrated(2 * seed), calibrated(2 * seed + 1)
        d = compare_profiles(old, new)
        false_alarms += bool(d.changed)
        se = np.hypot(*(p["uncertainty"]["noise"]["D_A"]["stderr"] for p in (old, new)))
        moved = compare_profiles(old, calibrated(2 * seed + 1, D_A=D[0] + 5 * se))
        found += [r.name for r in moved.changed] == ["D_A"]
    assert false_alarms <= 2, false_alarms
    assert found >= 20, found


def test_diff_table_and_bad_input():
    from hwloop.errors import HwloopError

    old = calibrated(0)
    d = compare_profiles(old, old)
    assert not d.changed and all(r.z == 0 for r in d.rows)
    assert {"D_A", "D_M", "D_AC", "D_MC", "gain spread", "mean gain", "ADC step"} <= {r.name for r in d.rows}
    assert "0 terms changed" in d.table()
    with pytest.raises(HwloopError, match="not a calibrated profile"):
        compare_profiles({"noise": {}}, old)
    with pytest.raises(HwloopError, match="alpha"):
        compare_profiles(old, old, alpha=2.0)


def test_cli_diff_end_to_end(make_bench, tmp_path, capsys):
    """Two calibrations of one simulated chip: no change; a chip with D_A raised by 5 standard errors: D_A."""
    from hwloop.cli import main
    from hwloop.profiles import parse_profile

    def profile(d_a):
        return parse_profile("version: 1\nprovenance: {source: hand-written}\n"
                             f"noise: {{D_A: {float(d_a)!r}, D_M: 5.0e-4, D_AC: 5.0e-5}}\n"
                             "gain_offset: {gain: 0.03, offset: 0.02}\n")

    def calibrate(bench, name):
        out = tmp_path / f"{name}.yaml"
        assert main(["calibrate", "--resource", bench.resource, "--out", str(out), "--budget", "20000",
                     "--seed", "0"]) == 0
        capsys.readouterr()
        return out

    args = dict(max_inputs=16, max_outputs=16, activations=("LINear",))
    same = make_bench(profile(2e-4), seed=1, **args)
    a, b = calibrate(same, "a"), calibrate(same, "b")
    assert main(["calibrate", "diff", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "0 terms changed" in text and "D_A" in text
    se = yaml.safe_load(a.read_text())["uncertainty"]["noise"]["D_A"]["stderr"]
    changed = make_bench(profile(2e-4 + 5 * np.sqrt(2) * se), seed=2, **args)
    c = calibrate(changed, "c")
    assert main(["calibrate", "diff", str(a), str(c)]) == 1
    text = capsys.readouterr().out
    assert "1 term changed: D_A" in text
    assert main(["calibrate", "diff", str(a), str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
