"""The analysis/prediction files name their per-layer arrays once (``output_mean``, ``output_variance``, ...)
on named dimensions (layer, sample, neuron), and files written before these names still read."""

from __future__ import annotations

import numpy as np
import xarray as xr

from hwloop import cf
from hwloop.analysis import analyze_run, layer_table
from hwloop.analysis.figures import var_mean_stderr
from hwloop.analysis.measured import analyze_layer, save_analysis
from hwloop.analysis.networks import dense_onnx
from hwloop.data import Dataset
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import parse_profile
from hwloop.runner import run_model

WIDTHS = (5, 3)      # layers of different width: the narrower one is padded with NaN along ``neuron``


def _two_layer_run(tmp_path):
    rng = np.random.default_rng(4)
    weights = [rng.uniform(0.2, 1.0, (WIDTHS[0], 4)).astype(np.float32),
               rng.uniform(0.2, 1.0, (WIDTHS[1], WIDTHS[0])).astype(np.float32)]
    model = load_model(dense_onnx(tmp_path / "two.onnx", weights))
    x = rng.uniform(0.1, 1.0, (12, 4)).astype(np.float32)
    prof = parse_profile("version: 1\nprovenance: {source: assumption}\nnoise: {D_A: 1.0e-3}\n", "t.yaml")
    return run_model(model, Dataset("inputs", x, np.zeros(12, np.int64), 3), devices={0: Emulator(prof)},
                     repeats=6, seed=2)


def test_named_arrays_on_named_dimensions_with_units(tmp_path):
    res = _two_layer_run(tmp_path)
    ds = analyze_run(res)
    assert ds["output_mean"].dims == ("layer", "sample", "neuron")
    assert ds["output_variance"].dims == ("layer", "sample", "neuron")
    assert ds["neuron_snr_db"].dims == ("layer", "neuron")
    assert dict(ds.sizes) == {"layer": 2, "sample": 12, "neuron": max(WIDTHS), "repeat": 6}
    assert list(ds[cf.LAYER_NEURONS].values) == list(WIDTHS)
    assert ds["output_mean"].attrs["units"] == "a.u." and ds["output_variance"].attrs["units"] == "a.u.^2"
    assert ds["output_snr_db"].attrs["units"] == "dB" and "repetitions" in ds["output_mean"].attrs["long_name"]
    # the narrower layer is NaN past its neurons, and the helper gives exactly the estimator's arrays
    assert np.isnan(ds["output_variance"].values[1, :, WIDTHS[1]:]).all()
    for k in range(2):
        st = analyze_layer(np.asarray(res.layers[k]))
        np.testing.assert_array_equal(cf.layer_array(ds, "mean", k), st["mean"])
        np.testing.assert_array_equal(cf.layer_array(ds, "var", k), st["var"])
    # written as NetCDF and read back with plain xarray: the same arrays, units kept
    save_analysis(ds, tmp_path / "a.nc")
    back = xr.open_dataset(tmp_path / "a.nc").load()
    assert back["output_variance"].attrs["units"] == "a.u.^2"
    np.testing.assert_array_equal(cf.layer_array(back, "var", 1), cf.layer_array(ds, "var", 1))
    assert var_mean_stderr(back, 1) == var_mean_stderr(ds, 1) > 0
    # the printed table says its columns' units
    table = layer_table(ds).splitlines()
    assert table[2 + len(WIDTHS)].startswith("units: var, common, indep, add, pred var in output units² (a.u.^2)")


def _old_style(ds: xr.Dataset) -> xr.Dataset:
    """The same analysis as files written before the names: one ``mean_k`` per layer on (sample, neuron_k)."""
    old = ds.drop_vars([*cf.LAYER_ARRAYS.values(), cf.LAYER_NEURONS, "neuron"])
    for k in range(ds.sizes["layer"]):
        for key, name in cf.LAYER_ARRAYS.items():
            arr = cf.layer_array(ds, key, k)
            dims = ("sample", f"neuron_{k}")[-arr.ndim:]
            old[f"{key}_{k}"] = (dims, arr)
    return old


def test_files_with_the_old_per_layer_names_still_read(tmp_path):
    ds = analyze_run(_two_layer_run(tmp_path))
    old = _old_style(ds)
    assert "output_mean" not in old and "var_1" in old
    old.to_netcdf(tmp_path / "old.nc")
    back = xr.open_dataset(tmp_path / "old.nc").load()
    for key in cf.LAYER_ARRAYS:
        for k in range(2):
            np.testing.assert_array_equal(cf.layer_array(back, key, k), cf.layer_array(ds, key, k))
    assert var_mean_stderr(back, 0) == var_mean_stderr(ds, 0)
    assert cf.layer_array(back.drop_vars("var_1"), "var", 1) is None
