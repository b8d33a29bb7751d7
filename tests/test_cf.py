"""Every store kind opens in plain xarray with coordinates, units and long names, and survives to_netcdf."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hwloop import cf
from hwloop.store import LayerInfo, RunWriter, open_run

R, N, BS, C = 2, 6, 4, 3


def _check_cf(ds: xr.Dataset, where: str) -> None:
    """Coordinates for every dimension; units and long_name on every variable; to_netcdf and back."""
    for dim in ds.dims:
        assert dim in ds.coords, f"{where}: dimension {dim} has no coordinate"
    for name, v in ds.variables.items():
        assert "long_name" in v.attrs, f"{where}: {name} has no long_name"
        if v.dtype.kind in "fiub":
            assert "units" in v.attrs, f"{where}: {name} has no units"


def _roundtrip(ds: xr.Dataset, path) -> xr.Dataset:
    ds.to_netcdf(path)
    back = xr.open_dataset(path).load()
    for name in ds.data_vars:
        np.testing.assert_array_equal(np.asarray(back[name].values), np.asarray(ds[name].values))
        assert back[name].attrs["long_name"] == ds[name].attrs["long_name"]
    return back


def make_run(path) -> RunWriter:
    layers = [LayerInfo(0, "dense0", "Gemm+Sigmoid", "sigmoid", 4), LayerInfo(1, "dense1", "Gemm", "linear", C)]
    attrs = {"model_sha256": "m", "seed": 1, "pipelined": False, "devices": [{"name": "emu", "gain": 1.5}],
             "note": None}
    w = RunWriter.create(path, layers=layers, n_samples=N, n_classes=C, batch_size=BS, repeats=R, attrs=attrs)
    rng = np.random.default_rng(0)
    for b in range(2):
        n = min(BS, N - b * BS)
        out = rng.standard_normal((R, n, C)).astype(np.float32)
        w.write_batch(b, layers=[rng.standard_normal((R, n, 4)).astype(np.float32), out],
                      clean=[rng.standard_normal((n, 4)).astype(np.float32), out[0]], output=out,
                      clean_output=out[0], labels=rng.integers(0, C, n))
    w.finish()
    return w


def test_run_store_is_cf_and_survives_netcdf(tmp_path):
    make_run(tmp_path / "r.zarr")
    root = xr.open_zarr(tmp_path / "r.zarr")
    assert "batch_done" not in root.variables and "batch" not in root.dims   # bookkeeping is hidden
    _check_cf(root, "run root")
    assert root["output"].attrs["units"] == "a.u." and list(root["sample"].values) == list(range(N))
    back = _roundtrip(root, tmp_path / "r.nc")
    assert cf.decode_attrs(back.attrs)["devices"] == [{"name": "emu", "gain": 1.5}]
    for k in range(2):
        layer = xr.open_zarr(tmp_path / "r.zarr", group=f"layers/{k}")
        _check_cf(layer, f"layer {k}")
        _roundtrip(layer, tmp_path / f"l{k}.nc")
    run = open_run(tmp_path / "r.zarr")
    assert run.attrs["pipelined"] is False and run.attrs["note"] is None and run.attrs["seed"] == 1
    da = run.layer(1)
    assert da.attrs["name"] == "dense1" and da.attrs["activation"] == "linear" and da.attrs["units"] == "a.u."
    assert list(da.coords["neuron"].values) == list(range(C))


def test_encode_decode_attrs_roundtrip():
    attrs = {"a": 1, "b": 2.5, "c": "x", "d": True, "e": None, "f": [1, 2], "g": {"h": [{"i": "j"}]}}
    enc = cf.encode_attrs(attrs)
    assert set(enc) == {"a", "b", "c", "d_json", "e_json", "f_json", "g_json"}
    assert cf.decode_attrs(enc) == attrs


def test_analysis_store_is_cf_and_survives_netcdf(tmp_path):
    from hwloop.analysis.measured import analyze_run, save_analysis

    make_run(tmp_path / "r.zarr")
    ds = analyze_run(open_run(tmp_path / "r.zarr"))
    save_analysis(ds, tmp_path / "a.nc")
    back = xr.open_dataset(tmp_path / "a.nc").load()
    _check_cf(back, "analysis")
    assert back["output_variance"].dims == ("layer", "sample", "neuron") and back["layer_name"].values[1] == "dense1"
    assert back["output_variance"].attrs["units"] == "a.u.^2" and back["neuron_snr_db"].attrs["units"] == "dB"
    assert back["snr_db_median"].attrs["units"] == "dB" and "fit_additive_stderr" in back


def test_calibration_store_is_cf_and_survives_netcdf(tmp_path):
    from hwloop.calibration.measure import CalibrationStore
    from hwloop.calibration.plan import ChipInfo, design_plan

    chip = ChipInfo("ACME,X1,1,0", 8, 8, 64, 64, (-1.0, 1.0), 1.0, 1.0, (-1.0, 1.0), 12, ("linear",))
    plan = design_plan(chip, 2000, 0)
    store = CalibrationStore.create(tmp_path / "c.zarr", plan, {"idn": chip.idn, "started": "", "extra": None})
    p = plan.probes[0]
    store.write_block(p.index, np.zeros((2, 3, 8), np.float32), t=1.5, temperature=25.0)
    store.set_attrs(sessions=1)
    root = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)
    assert "done" not in root.variables and root["t"].attrs["units"] == "s"
    _check_cf(root, "calibration")
    back = _roundtrip(root, tmp_path / "c.nc")
    assert cf.decode_attrs(back.attrs)["plan"]["budget"] == 2000
    again = CalibrationStore(tmp_path / "c.zarr")
    assert again.attrs["sessions"] == 1 and again.attrs["extra"] is None and again.done.sum() == 1


def test_sweep_store_is_cf_and_survives_netcdf(tmp_path, demo_onnx):
    from hwloop.walking.sweep import SweepSettings, open_sweep, run_sweep

    out = run_sweep(SweepSettings(sigmas=(0.1, 1.0), data="digits@40", repeats=1, sites=(1,)), tmp_path / "s.zarr",
                    demo_onnx)
    root = xr.open_zarr(out, consolidated=False)
    _check_cf(root, "sweep")
    assert "standard deviation" in root["sigma"].attrs["long_name"]
    back = _roundtrip(root, tmp_path / "s.nc")
    assert cf.decode_attrs(back.attrs)["settings"]["repeats"] == 1
    opened = open_sweep(out)
    assert cf.decode_attrs(opened.attrs)["settings"]["sigmas"] == [0.1, 1.0] and opened.attrs["complete"] == 1
    again = _roundtrip(opened, tmp_path / "opened.nc")      # what open_sweep returns is netCDF-ready too
    assert cf.decode_attrs(again.attrs) == cf.decode_attrs(opened.attrs)
