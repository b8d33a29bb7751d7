"""Any chip: calibration and validation through the generic Device interface, and term checks for scheduled runs.

``LabChip`` is a plain Python ``Device`` (what a lab writes for its own chip,
docs/own-chip.md): it is not the VISA driver; its physics is the emulator
with a hidden profile, and it reports its capabilities itself.
"""

from __future__ import annotations

import pytest

from hwloop.calibration import calibrate, chip_from_device
from hwloop.devices import Device, Emulator
from hwloop.errors import HwloopError
from hwloop.profiles import parse_profile

pytest_plugins = ["tests.bench_fixtures"]

HIDDEN = ("version: 1\nprovenance: {source: hand-written}\n"
          "noise: {D_A: 2.0e-4, D_M: 5.0e-4, D_AC: 5.0e-5, D_MC: 1.0e-4}\n"
          "gain_offset: {gain: 0.02, offset: 0.03}\nadc: {bits: 16, range: [-8.0, 8.0]}\n")


class LabChip(Device):
    """A lab's own chip class: program/run, and the capabilities it knows about itself."""

    def __init__(self, profile_text: str = HIDDEN, **capabilities):
        self.emulator = Emulator(parse_profile(profile_text))
        self.capabilities = {"idn": "Lab,OwnChip,7,1", "max_inputs": 64, "max_outputs": 32, "weight_max": 4.0,
                             "input_range": (-4.0, 4.0), "output_range": (-8.0, 8.0), "output_bits": 16,
                             "activations": ("linear", "sigmoid", "tanh"), **capabilities}
        self.programs = 0

    def program(self, layer, *, seed: int = 0) -> None:
        self.emulator.program(layer, seed=seed)
        self.layer = layer
        self.programs += 1

    def run(self, x, *, repeats, key=()):
        return self.emulator.run(x, repeats=repeats, key=key)

    def temperature(self) -> float:
        return 25.0


def test_plain_device_is_calibrated_and_its_twin_validates(tmp_path, demo_onnx):
    from hwloop.calibration.validate import validate
    from hwloop.graph import load_model

    device = LabChip()
    chip = chip_from_device(device)
    assert chip.info.max_inputs == 64 and chip.info.activations == ("linear", "sigmoid", "tanh")
    prof, fit, meas = calibrate(chip, tmp_path / "lab.yaml", store=tmp_path / "lab.zarr", budget=40_000, seed=0)
    assert device.programs >= 2 and prof.provenance["instrument"] == "Lab,OwnChip,7,1"
    truth = dict(D_A=2e-4, D_M=5e-4, D_AC=5e-5, D_MC=1e-4)
    for k, t in truth.items():
        est, se = fit.noise.intensities_[k], fit.noise.stderr_[k]
        assert abs(est - t) <= 4 * se, (k, est, se, t)
    assert {r["function"] for r in fit.transfer.results_.values()} == {"sigmoid", "tanh"}
    model = load_model(demo_onnx)
    chip_devices = {L.index: LabChip() for L in model.layers}
    v = validate(prof, chip_devices, model, "digits@300", repeats=10, seed=0)
    assert v.passed, v.table()
    # a twin that is not this chip (no noise at all) fails on the same device
    assert not validate(parse_profile("version: 1\nprovenance: {source: hand-written}\n"), chip_devices, model,
                        "digits@300", repeats=10, seed=0).passed


def test_capabilities_the_device_cannot_report_come_from_arguments():
    class Bare(LabChip):
        def __init__(self):
            super().__init__()
            self.capabilities = None

    with pytest.raises(HwloopError, match="needs the chip's max_inputs, max_outputs, input_range, weight_max"):
        chip_from_device(Bare())
    chip = chip_from_device(Bare(), {"max_inputs": 8, "max_outputs": 4, "input_range": [-1, 1], "weight_max": 1,
                                     "output_range": [-8, 8]})
    assert chip.info.max_outputs == 4 and chip.info.input_range == (-1.0, 1.0)
    assert chip.info.activations == ("linear",) and chip.info.idn.startswith("Bare")
    with pytest.raises(HwloopError, match="unknown capabilities colour"):
        chip_from_device(Bare(), {"colour": "red"})
    # arguments override what the device says (a bench file's settings)
    assert chip_from_device(LabChip(), {"max_outputs": 8}).info.max_outputs == 8


def test_scheduled_term_check_passes_unchanged_chip_and_fails_a_changed_one(tmp_path):
    from hwloop.calibration.validate import validate_terms

    small = dict(max_inputs=16, max_outputs=16, activations=("linear",))
    prof, _, _ = calibrate(chip_from_device(LabChip(**small)), tmp_path / "p.yaml", store=tmp_path / "p.zarr",
                           budget=40_000, seed=0)
    same = validate_terms(prof, chip_from_device(LabChip(**small)), budget=40_000, seed=1)
    assert not same.changed, same.table()
    assert "verdict: PASS" in same.table() and same.table().count(" pass") == len(same.rows)
    worse = LabChip(HIDDEN.replace("D_A: 2.0e-4", "D_A: 4.0e-4"), **small)
    moved = validate_terms(prof, chip_from_device(worse), budget=40_000, seed=1)
    assert [r.name for r in moved.changed] == ["D_A"], moved.table()
    assert "verdict: FAIL" in moved.table()


def test_cli_validate_terms(make_bench, tmp_path, capsys):
    from hwloop.cli import main

    prof = parse_profile(HIDDEN.replace("adc: {bits: 16, range: [-8.0, 8.0]}\n", ""))
    bench = make_bench(prof, seed=3, max_inputs=16, max_outputs=16, activations=("LINear",))
    out = tmp_path / "chip.yaml"
    assert main(["calibrate", "--resource", bench.resource, "--out", str(out), "--budget", "40000"]) == 0
    capsys.readouterr()
    assert main(["validate", str(out), "--resource", bench.resource, "--terms", "--budget", "40000",
                 "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "verdict: PASS" in text and "D_MC" in text
    assert main(["validate", str(out), "--resource", bench.resource]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_a_visa_chip_reports_its_capabilities_and_arguments_override_them(make_bench):
    from hwloop.bench import VisaDevice

    bench = make_bench(parse_profile(HIDDEN), max_inputs=16, max_outputs=12)
    with VisaDevice(bench.resource) as dev:
        assert chip_from_device(dev).info.max_outputs == 12              # from SYST:CAP?
        chip = chip_from_device(dev, {"max_outputs": 8})
        assert chip.info.max_outputs == 8 and chip.info.max_inputs == 16 and chip.info.idn.startswith("Lumen")
