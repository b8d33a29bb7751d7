"""Range mapping keeps the twin honest: exact scaling by default, placement recorded, twin follows the chip."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.bench import VisaDevice
from hwloop.calibration.validate import compare, validate
from hwloop.devices.emulator import emulators
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model

pytest_plugins = ["tests.bench_fixtures"]


def chip_devices(bench, model, **options):
    first = VisaDevice(bench.resource, on_clip="warn", **options)
    return {L.index: first if L.index == 0 else first.sibling() for L in model.layers}


@pytest.mark.slow
def test_scaled_sigmoid_layer_validates_against_its_twin(make_bench, demo_onnx):
    """The demo's weights reach ~2 on a chip that takes 1: its sigmoid and tanh run on the host, after the
    chip's noise.  The twin that follows the chip's plan passes; an emulator that runs the layers whole
    (noise after the activation) does not."""
    profile = load_profile("semenova")
    bench = make_bench(profile, seed=5)
    model = load_model(demo_onnx)
    devs = chip_devices(bench, model)
    try:
        with pytest.warns(UserWarning, match=r"sigmoid runs on the host .*noise lands before the activation"):
            v = validate(profile, devs, model, "digits@300", repeats=20, seed=1)
        placement = devs[0].describe()["placement"]
    finally:
        for d in devs.values():
            d.close()
    assert v.passed, v.table()
    assert placement["activation"] == "host" and placement["scale"] == 2.0
    # negative control: the same profile on whole layers (what the twin did before) is off on layer 0
    again = chip_devices(bench, model)
    try:
        with pytest.warns(UserWarning):
            chip = run_model(model, "digits@300", devices=again, repeats=20, seed=1)
    finally:
        for d in again.values():
            d.close()
    whole = run_model(model, "digits@300", devices=emulators(profile, model.layers), repeats=20, seed=1)
    naive = compare(chip, whole)
    assert not naive.rows[0]["pass"] and abs(naive.rows[0]["var_ratio"] - 1) > 0.3, naive.table()


def test_strict_ranges_refuses_and_default_records(make_bench, demo_onnx, tmp_path, capsys):
    from hwloop.cli import main
    from hwloop.store import open_run

    bench = make_bench()
    p = tmp_path / "bench.yaml"
    p.write_text(f'devices:\n  chip: {{resource: "{bench.resource}", strict_ranges: true}}\ndefault: chip\n')
    args = ["run", str(demo_onnx), "--bench", str(p), "--data", "digits@20", "--out", str(tmp_path / "r.zarr")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bench.yaml:2: devices: chip: layer 0" in err and "strict_ranges is set" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.zarr").exists()
    p.write_text(f'devices:\n  chip: {{resource: "{bench.resource}"}}\ndefault: chip\n')
    with pytest.warns(UserWarning, match="weights scaled exactly by 1/2"):
        assert main(args) == 0
    devs = open_run(tmp_path / "r.zarr").attrs["devices"]
    assert [d["placement"]["activation"] for d in devs] == ["host", "host", "chip"]
    assert [d["placement"]["scale"] for d in devs] == [2.0, 2.0, 4.0]
    assert "noise lands before the activation" in devs[0]["placement"]["notes"][1]
    run = open_run(tmp_path / "r.zarr")        # exact: the ideal chip equals the ideal reference within its ADC
    step = 32 / (2 ** 16 - 1)
    for k, s in enumerate((2.0, 2.0, 4.0)):
        assert np.abs(np.asarray(run.layer(k))[0] - np.asarray(run.clean(k))).max() < 8 * s * step


@pytest.mark.slow
def test_readme_validate_line_passes_against_the_default_bench(make_bench, demo_onnx, tmp_path, capsys):
    """README: `hwloop calibrate --resource ...` then `hwloop validate chip.yaml --resource ... --model demo.onnx`
    against `hwloop bench serve` with its defaults (the ideal ANB-64R, weights up to 1: the demo needs scaling)."""
    from hwloop.cli import main

    bench = make_bench()                       # ChipSpec() defaults, instantaneous timing
    chip = tmp_path / "chip.yaml"
    assert main(["calibrate", "--resource", bench.resource, "--out", str(chip)]) == 0
    capsys.readouterr()
    with pytest.warns(UserWarning, match="weights scaled exactly"):
        code = main(["validate", str(chip), "--resource", bench.resource, "--model", str(demo_onnx)])
    text = capsys.readouterr().out
    assert code == 0 and "verdict: PASS" in text, text
