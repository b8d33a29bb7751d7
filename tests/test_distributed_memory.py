"""A Dask-sharded run without a store: every batch's result travels back and the run comes back in
memory, the same numbers as the local run (a step towards spreading one ``hwloop check``)."""

from __future__ import annotations

import numpy as np

from hwloop.check.model import _Look
from hwloop.devices.emulator import emulators
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model


def looked(model, look: int) -> dict:
    """Emulators wrapped as ``hwloop check`` wraps them for one look (its keys carry the look)."""
    return {k: _Look(d, look) for k, d in emulators(load_profile("semenova"), model.layers).items()}


def test_sharded_run_in_memory_equals_the_local_run(cnn_onnx, digits):
    """Also: emulators behind a wrapper (check's per-look keys) go to the workers, the wrapper with them."""
    model = load_model(cnn_onnx)
    ds = digits.head(150)
    kw = dict(repeats=3, seed=2, batch_size=40)       # 4 batches, the last one short
    local = run_model(model, ds, devices=looked(model, 1), **kw)
    dask = run_model(model, ds, devices=looked(model, 1), workers=2, **kw)
    assert not np.array_equal(local.output, run_model(model, ds, devices=looked(model, 2), **kw).output)
    assert dask.path is None and dask.attrs["dask"] == {"local_workers": 2}
    np.testing.assert_array_equal(dask.accuracy, local.accuracy)
    np.testing.assert_array_equal(dask.output, local.output)
    np.testing.assert_array_equal(dask.clean_output, local.clean_output)
    for a, b in zip(dask.layers + dask.clean_layers, local.layers + local.clean_layers):
        np.testing.assert_array_equal(a, b)
    assert dask.run().layer_names == [L.name for L in model.layers]
