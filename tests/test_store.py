"""The run store on its own: layout, partial runs, resume checks, atomic creation (real Zarr files)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hwloop.errors import HwloopError
from hwloop.store import LayerInfo, RunWriter, open_run

R, N, BS, C = 3, 10, 4, 5   # 3 batches: 4 + 4 + 2 samples
LAYERS = [LayerInfo(0, "dense0", "Gemm+Sigmoid", "sigmoid", 6), LayerInfo(1, "dense1", "Gemm", "linear", C)]
ATTRS = {"model_sha256": "m", "data_sha256": "d", "n_samples": N, "seed": 1, "repeats": R, "batch_size": BS}


def make(path, **kw) -> RunWriter:
    return RunWriter.create(path, layers=LAYERS, n_samples=N, n_classes=C, batch_size=BS, repeats=R,
                            attrs=dict(ATTRS), **kw)


def batch(index: int, rng: np.random.Generator) -> dict:
    n = min(BS, N - index * BS)
    out = rng.standard_normal((R, n, C)).astype(np.float32)
    return dict(layers=[rng.standard_normal((R, n, 6)).astype(np.float32), out],
                clean=[rng.standard_normal((n, 6)).astype(np.float32), out[0]],
                output=out, clean_output=out[0], labels=rng.integers(0, C, n))


def test_complete_run_reads_back_with_named_dims(tmp_path):
    rng = np.random.default_rng(0)
    w = make(tmp_path / "r.zarr")
    batches = [batch(b, rng) for b in range(3)]
    for b, arrays in enumerate(batches):
        w.write_batch(b, **arrays)
    acc = w.finish()
    run = open_run(tmp_path / "r.zarr")
    assert run.complete and run.layer_names == ["dense0", "dense1"]
    assert run.layer(0).dims == ("repeat", "sample", "neuron") and run.layer("dense0").shape == (R, N, 6)
    np.testing.assert_array_equal(run.layer(0).values, np.concatenate([a["layers"][0] for a in batches], axis=1))
    np.testing.assert_array_equal(run.clean(1).values, np.concatenate([a["clean"][1] for a in batches]))
    labels = np.concatenate([a["labels"] for a in batches])
    np.testing.assert_array_equal(run.labels.values, labels)
    expect = (np.concatenate([a["output"] for a in batches], axis=1).argmax(2) == labels).mean(1)
    np.testing.assert_allclose(run.accuracy.values, expect)
    np.testing.assert_allclose(acc, expect)
    assert run.attrs["seed"] == 1 and run.attrs["n_batches"] == 3
    # plain xarray sees the same arrays with named dims
    root = xr.open_zarr(tmp_path / "r.zarr")
    assert root["output"].dims == ("repeat", "sample", "class")
    np.testing.assert_allclose(root["accuracy"].values, expect)
    layer = xr.open_zarr(tmp_path / "r.zarr", group="layers/1")
    assert layer["clean"].dims == ("sample", "neuron")


def test_partial_run_exposes_only_completed_batches(tmp_path):
    rng = np.random.default_rng(1)
    w = make(tmp_path / "r.zarr")
    b0, b2 = batch(0, rng), batch(2, rng)
    w.write_batch(0, **b0)
    w.write_batch(2, **b2)
    # batch 1: data half-written, marker never set (what a kill mid-batch leaves)
    w.root["layers/0/output"][:, 4:8] = 1.0
    run = open_run(tmp_path / "r.zarr")
    assert not run.complete
    assert list(w.done()) == [True, False, True]
    assert run.layer(0).sizes["sample"] == 6
    np.testing.assert_array_equal(run.layer(0).values, np.concatenate([b0["layers"][0], b2["layers"][0]], axis=1))
    assert run.accuracy.sizes["repeat"] == R


def test_existing_path_refused_and_overwrite_replaces(tmp_path):
    path = tmp_path / "r.zarr"
    make(path).write_batch(0, **batch(0, np.random.default_rng(2)))
    with pytest.raises(HwloopError, match=r"r\.zarr: output exists"):
        make(path)
    make(path, overwrite=True)
    assert list(RunWriter(path).done()) == [False, False, False]


def test_resume_checks_every_key(tmp_path):
    path = tmp_path / "r.zarr"
    make(path)
    assert RunWriter.resume(path, dict(ATTRS)).batch_size == BS
    for key in ("model_sha256", "data_sha256", "seed", "repeats", "batch_size"):
        with pytest.raises(HwloopError, match=f"cannot resume: {key} differs"):
            RunWriter.resume(path, dict(ATTRS, **{key: "other"}))


def test_failed_start_leaves_nothing(tmp_path):
    with pytest.raises(HwloopError, match="not JSON-serialisable"):
        RunWriter.create(tmp_path / "r.zarr", layers=LAYERS, n_samples=N, n_classes=C, batch_size=BS,
                         repeats=R, attrs={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(HwloopError, match="no such run store"):
        open_run(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(HwloopError, match="not an hwloop run store"):
        open_run(tmp_path / "plain")
