"""A calibration store opens as one xarray Dataset: every completed block stacked along ``reading``,
indexed back to (block, repeat, sample), with units, and it survives to_netcdf."""

from __future__ import annotations

import numpy as np
import xarray as xr

from hwloop import cf
from hwloop.calibration import calibrate, chip_from_device
from hwloop.calibration.dataset import open_calibration
from hwloop.calibration.measure import CalibrationStore
from hwloop.devices import Emulator
from hwloop.profiles import parse_profile

D_A = 1.0e-3
CAPS = {"idn": "Test,Emu,1,0", "max_inputs": 8, "max_outputs": 8, "weight_max": 2.0, "input_range": (-1.0, 1.0),
        "output_range": (-4.0, 4.0), "output_bits": 16, "activations": ("linear", "sigmoid")}


def _partial_store(tmp_path, blocks: int):
    dev = Emulator(parse_profile(f"version: 1\nprovenance: {{source: assumption}}\nnoise: {{D_A: {D_A}}}\n"))
    chip = chip_from_device(dev, CAPS)
    calibrate(chip, tmp_path / "c.yaml", store=tmp_path / "c.zarr", budget=6000, seed=0, stop_after=blocks)
    return tmp_path / "c.zarr"


def test_calibration_opens_as_one_dataset_and_round_trips(tmp_path):
    path = _partial_store(tmp_path, blocks=4)
    meas = CalibrationStore(path).measurements()
    ds = open_calibration(path)
    assert len(meas.blocks) == 4 and ds.sizes["probe"] == 4        # completed blocks only
    assert ds["output"].dims == ("reading", "neuron") and ds.sizes["neuron"] == 8
    assert ds.sizes["reading"] == sum(b.y.shape[0] * b.y.shape[1] for b in meas.blocks)
    for dim in ds.dims:
        assert dim in ds.coords
    for name, v in ds.variables.items():
        assert "long_name" in v.attrs, name
        assert v.dtype.kind not in "fiu" or "units" in v.attrs, name
    assert ds["output"].attrs["units"] == "a.u." and ds["t"].attrs["units"] == "s"
    # every reading goes back to its block, repetition and sample
    out, blk, rep, smp = (ds[k].values for k in ("output", "block", "repeat", "sample"))
    for b in meas.blocks:
        r, s = b.y.shape[0] - 1, b.y.shape[1] - 1
        row = np.flatnonzero((blk == b.probe.index) & (rep == r) & (smp == s))
        assert row.size == 1
        np.testing.assert_array_equal(out[row[0]], b.y[r, s])
        np.testing.assert_array_equal(ds["level"].values[blk == b.probe.index][: b.y.shape[1]], b.probe.levels)
    # a level block's variance over repetitions, from the stacked view, is the emulator's D_A:
    # n = repeats * 8 neurons squared fluctuations per sample, relative s.e. sqrt(2 / n)
    first = meas.blocks[0]
    var = ds["output"].where(ds.block == first.probe.index, drop=True).groupby("sample").var(ddof=1)
    n = first.y.shape[0] * 8
    assert abs(float(var.mean()) / D_A - 1) < 5 * np.sqrt(2 / (n * first.y.shape[1]))
    ds.to_netcdf(tmp_path / "c.nc")
    back = xr.open_dataset(tmp_path / "c.nc").load()
    np.testing.assert_array_equal(back["output"].values, ds["output"].values)
    assert list(back["block_kind"].values) == list(ds["block_kind"].values)
    assert cf.decode_attrs(back.attrs)["plan"]["budget"] == 6000


def test_calibration_page_states_values_to_their_error_with_units(tmp_path):
    from hwloop.calibration.report import calibration_summary, write_calibration_report
    from hwloop.numbers import with_error

    dev = Emulator(parse_profile(f"version: 1\nprovenance: {{source: assumption}}\nnoise: {{D_A: {D_A}}}\n"))
    prof, fit, _ = calibrate(chip_from_device(dev, CAPS), tmp_path / "c.yaml", store=tmp_path / "c.zarr",
                             budget=20000, seed=0)
    noise = dict(calibration_summary(fit, prof.provenance))["noise intensities D (variances)"]
    d_a = with_error(fit.noise.intensities_["D_A"], fit.noise.stderr_["D_A"])
    assert f"D_A {d_a} [output units²]" in noise and "D_M " in noise and "[1]" in noise
    page = write_calibration_report(fit, tmp_path / "c.html", provenance=prof.provenance).read_text()
    assert "value ± standard error" in page and d_a in page and "output units²" in page


def test_with_error_keeps_only_the_digits_the_error_supports():
    from hwloop.numbers import with_error

    assert with_error(0.02068, 0.003776) == "0.0207 ± 0.0038"
    assert with_error(2.005e-4, 1.5e-6) == "(2.005 ± 0.015)e-04"
    assert with_error(-0.0123, 0.0004) == "-0.01230 ± 0.00040"
    assert with_error(123.456, 2.1) == "123.5 ± 2.1"
    assert with_error(0.003907, 1.1e-12) == "0.003907 ± 1.1e-12"       # an exact value: no 10 digits
    assert with_error(5.0, float("nan")) == "5"
