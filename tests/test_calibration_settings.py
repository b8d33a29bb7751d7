"""calibrate's settings: a CalibrationSettings object and the keywords are one call (emulated chip, real store)."""

from __future__ import annotations

import dataclasses

import pytest

from hwloop.calibration import CalibrationSettings, calibrate, chip_from_device
from hwloop.devices import Emulator
from hwloop.profiles import parse_profile

HIDDEN = ("version: 1\nprovenance: {source: hand-written}\n"
          "noise: {D_A: 2.0e-4, D_M: 5.0e-4}\nadc: {bits: 16, range: [-8.0, 8.0]}\n")
CAPS = {"idn": "Lab,Emu,1,1", "max_inputs": 8, "max_outputs": 8, "weight_max": 4.0, "input_range": (-4.0, 4.0),
        "output_range": (-8.0, 8.0), "output_bits": 16, "activations": ("linear",)}


def chip():
    return chip_from_device(Emulator(parse_profile(HIDDEN)), CAPS)


def test_settings_object_and_keywords_give_the_same_calibration(tmp_path):
    kw = dict(budget=5_000, seed=2, name="emu")
    by_keywords, _, _ = calibrate(chip(), tmp_path / "a.yaml", store=tmp_path / "a.zarr", **kw)
    settings = CalibrationSettings(tmp_path / "b.zarr", budget=5_000, seed=7, name="emu")
    by_object, _, _ = calibrate(chip(), tmp_path / "b.yaml", settings, seed=2)   # a keyword replaces a field
    assert by_object.data["noise"] == by_keywords.data["noise"] and by_object.name == "emu"
    assert by_object.provenance["store"] == str(tmp_path / "b.zarr") and settings.seed == 7   # settings unchanged
    assert [f.name for f in dataclasses.fields(CalibrationSettings)][:3] == ["store", "budget", "seed"]
    with pytest.raises(TypeError, match="budgit"):
        calibrate(chip(), tmp_path / "c.yaml", store=tmp_path / "c.zarr", budgit=5_000)
    assert not (tmp_path / "c.zarr").exists()
