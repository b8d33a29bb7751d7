"""run_model's settings object, the in-memory result read with named dimensions, provenance in one place."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hwloop.devices.emulator import emulators
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.provenance import data_sha256, session, versions
from hwloop.runner import MemoryRun, RunSettings, run_model


def test_settings_object_and_keywords_give_the_same_numbers(mlp_onnx, digits):
    model = load_model(mlp_onnx)
    prof = load_profile("semenova")
    kw = dict(repeats=3, seed=5, batch_size=40)
    a = run_model(model, digits, devices=emulators(prof, model.layers), **kw)
    b = run_model(model, digits, RunSettings(devices=emulators(prof, model.layers), **kw))
    c = run_model(model, digits, RunSettings(seed=99, batch_size=40), devices=emulators(prof, model.layers), repeats=3,
                  seed=5)                     # keywords override the object's fields
    for r in (b, c):
        np.testing.assert_array_equal(r.output, a.output)
        for x, y in zip(r.layers, a.layers):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.output, run_model(model, digits, RunSettings(**{**kw, "seed": 6},
                                                  devices=emulators(prof, model.layers))).output)


def test_unknown_setting_is_a_type_error(mlp_onnx, digits):
    with pytest.raises(TypeError, match="repeat"):
        run_model(mlp_onnx, digits, repeat=3)


def test_memory_result_reads_like_the_store(cnn_onnx, digits, tmp_path):
    """Same seed in memory and into a store: the same named arrays, value for value."""
    model = load_model(cnn_onnx)
    kw = dict(repeats=2, seed=3, batch_size=150)
    mem = run_model(model, digits, devices=emulators(load_profile("semenova"), model.layers), **kw).run()
    stored = run_model(model, digits, devices=emulators(load_profile("semenova"), model.layers),
                       out=tmp_path / "r.zarr", **kw).run()
    assert isinstance(mem, MemoryRun) and mem.layer_names == stored.layer_names
    for get in (lambda r: r.layer(1), lambda r: r.clean(0), lambda r: r.output, lambda r: r.clean_output,
                lambda r: r.labels, lambda r: r.accuracy, lambda r: r.layer(mem.layer_names[0])):
        m, s = get(mem), get(stored)
        assert m.dims == s.dims and m.attrs["units"] == s.attrs["units"]
        xr.testing.assert_equal(m.reset_coords(drop=True).drop_vars(list(m.coords)),
                                s.load().reset_coords(drop=True).drop_vars(list(s.coords)))


def test_provenance_collected_once():
    v = versions()
    assert v["hwloop"] and v["numpy"] == np.__version__ and "torch" in v
    s = session()
    assert set(v) <= set(s) and {"python", "command", "started"} <= set(s)
    a, b = np.arange(6, dtype=np.float32), np.arange(3)
    assert data_sha256([a, b]) == data_sha256([a.reshape(2, 3), b]) != data_sha256([b, a])


def test_memory_estimate_counts_batches_in_flight(cnn_onnx, digits, tmp_path, monkeypatch):
    """One batch in flight without the pipeline, one per stage with it (the estimate refused LeNet-5 x 1000
    x 10 repeats on a 24 GiB machine when it counted a batch per stage for a sequential run)."""
    import hwloop.runner as runner

    asked = []
    monkeypatch.setattr(runner, "require_memory", lambda nbytes, what, hint: asked.append(nbytes))
    for pipeline in (False, True):
        run_model(cnn_onnx, digits.head(40), repeats=2, batch_size=10, pipeline=pipeline,
                  out=tmp_path / f"{pipeline}.zarr")
    n_stages = len(load_model(cnn_onnx).layers) + 1
    assert asked[1] == pytest.approx(asked[0] * n_stages)
