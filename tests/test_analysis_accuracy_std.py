"""``accuracy_std`` is a standard deviation between repeats (ddof 1): the old key stays for its readers,
a clearer key and the words travel with it, in the analysis Dataset (and its netCDF) and in check's JUnit."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import xarray as xr

from hwloop.analysis import analyze_run
from hwloop.check import check_model
from hwloop.devices import Emulator
from hwloop.profiles import load_profile
from hwloop.runner import run_model
from hwloop.store import open_run


def test_analysis_attrs_keep_accuracy_std_and_say_what_it_is(demo_onnx, tmp_path):
    out = tmp_path / "run.zarr"
    devices = {k: Emulator(load_profile("semenova")) for k in range(3)}
    run_model(demo_onnx, "digits@60", devices=devices, repeats=6, seed=3, out=out)
    acc = np.asarray(open_run(out).accuracy)
    assert np.ptp(acc) > 0            # the repeats differ, so ddof 0 and ddof 1 differ too
    ds = analyze_run(open_run(out))
    ds.to_netcdf(tmp_path / "a.nc")
    with xr.open_dataset(tmp_path / "a.nc") as back:
        a = back.attrs
    assert a["accuracy_std"] == pytest.approx(acc.std(ddof=1)) == a["accuracy_std_between_repeats"]
    assert a["accuracy_sem"] == pytest.approx(acc.std(ddof=1) / math.sqrt(acc.size))
    assert "between repeats (ddof 1)" in a["accuracy_std_description"]


def test_junit_properties_carry_the_std_and_the_sem(demo_onnx, tmp_path):
    r = check_model(demo_onnx, profile="semenova", data="digits@100", repeats=3, min_accuracy=0.0)
    r.write_junit(tmp_path / "j.xml")
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "j.xml").getroot().iter("property")}
    std = r.accuracy.std(ddof=1)
    assert float(props["accuracy_std"]) == pytest.approx(std, abs=1e-6)
    assert props["accuracy_std_between_repeats"] == props["accuracy_std"]
    assert float(props["accuracy_sem"]) == pytest.approx(std / math.sqrt(3), abs=1e-6)
