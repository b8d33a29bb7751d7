"""What `hwloop calibrate` and `hwloop validate` print: values rounded to their standard error, with units.

The calibrate table comes from a real calibration of a simulated chip (real pyvisa over TCP).
"""

from __future__ import annotations

from hwloop.calibration.drift import DriftFit
from hwloop.calibration.validate import Tolerances, Validation
from hwloop.commands.calibrate import drift_line
from hwloop.numbers import with_error
from hwloop.profiles import load_profile, parse_profile

pytest_plugins = ["tests.bench_fixtures"]


def test_calibrate_prints_terms_with_errors_and_units(make_bench, tmp_path, capsys):
    from hwloop.cli import main

    prof = parse_profile("version: 1\nprovenance: {source: hand-written}\nnoise: {D_A: 4.0e-4, D_M: 1.0e-3}\n")
    bench = make_bench(prof, seed=3, max_inputs=16, max_outputs=16, activations=("LINear",))
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", "--resource", bench.resource, "--out", str(out), "--budget", "8000"]) == 0
    text = capsys.readouterr().out
    assert "+-" not in text
    head = text.splitlines()[1]
    assert head.split() == ["term", "value", "±", "standard", "error", "units"]
    at = head.index("value"), head.index("units")       # the columns as the header places them
    rows = {ln[:at[0]].strip(): (ln[at[0]:at[1]].strip(), ln[at[1]:]) for ln in text.splitlines()[2:9]}
    assert rows["D_A"][1] == "output units²" and rows["D_M"][1] == "1" and rows["ADC step"][1] == "output units"
    unc = load_profile(out).data["uncertainty"]["noise"]
    for k in ("D_A", "D_M"):       # the printed value is the fitted one rounded to its error, not 5 digits
        value = load_profile(out).data["noise"][k]
        assert rows[k][0] == with_error(value, unc[k]["stderr"]) and "±" in rows[k][0]


def test_drift_line_names_the_units_of_each_rate():
    d = DriftFit()
    d.rates_ = {"offset_per_s": 0.005123, "offset_per_s_stderr": 0.00021, "gain_per_s": 0.0101,
                "gain_per_s_stderr": 0.0004, "offset_per_K": 0.0, "offset_per_K_stderr": 0.0,
                "gain_per_K": 0.0, "gain_per_K_stderr": 0.0}
    line = drift_line(d)
    assert line == ("drift: offset 0.00512 ± 0.00021 output units/s, "
                    "gain 0.01010 ± 0.00040 /s (relative to the mean gain)")
    d.rates_.update(offset_per_K=0.02, offset_per_K_stderr=0.003)
    assert "0.0200 ± 0.0030 output units/K" in drift_line(d)


def test_validate_table_states_units_and_db():
    row = {"index": 0, "layer": "gemm", "var_chip": 1e-3, "var_twin": 1.02e-3, "var_ratio": 1.02, "snr_chip": 20.0,
           "snr_twin": 20.1, "cm_chip": 0.1, "cm_twin": 0.11, "checks": {}, "pass": True}
    lines = Validation([row], 0.9, 0.9, Tolerances()).table().splitlines()
    head, units = lines[0], lines[1]
    # each unit sits under its column's name
    for name, unit in (("var chip", "[a.u.²]"), ("var twin", "[a.u.²]"), ("SNR chip", "[dB]"), ("SNR twin", "[dB]"),
                       ("ratio", "[1]"), ("cm twin", "[1]")):
        end = head.index(name) + len(name)
        assert units[:end].rstrip().endswith(unit), (name, units)
    assert "a.u.: the device's output units" in lines[-1]
