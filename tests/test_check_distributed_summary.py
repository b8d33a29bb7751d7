"""What travels back from the Dask workers for a check's look: each batch reduced on its worker
(``hwloop.check.model.look_part``: outputs, per-sample noise and signal sums), never every layer's
values; bit for bit what the local check computes from the same batches.  A CNN check on the workers
(the direct Conv path there too) gives the local check's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.check import check_model
from hwloop.check.model import LookPart, _Look, look_part
from hwloop.devices.emulator import emulators
from hwloop.distributed import summarise_sharded
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model


@pytest.fixture(scope="module")
def client(cluster):
    from dask.distributed import Client

    with Client(cluster) as c:
        yield c


def looked(model, look: int) -> dict:
    return {k: _Look(d, look) for k, d in emulators(load_profile("semenova"), model.layers).items()}


def test_workers_send_back_the_look_parts_the_local_batches_give(mlp_onnx, digits, client):
    # 4 batches, the last one short (30 rows: torch's GEMM on 5-11 rows rounds differently on 1 and on 2
    # threads, and the workers run on one: a local run on more would differ in the last bits there)
    model, ds = load_model(mlp_onnx), digits.head(150)
    kw = dict(repeats=6, seed=5, batch_size=40)
    theirs, mine = looked(model, 2), looked(model, 2)
    parts = summarise_sharded(model, ds, look_part, devices=theirs, client=client, **kw)
    local = run_model(model, ds, devices=mine, **kw)
    # what the workers' devices counted comes back with each batch: the counters end as a local run's
    assert [d.inner.stats for d in theirs.values()] == [d.inner.stats for d in mine.values()]
    assert [d.inner.stats["runs"] for d in mine.values()] == [4] * 4
    assert [type(p) for p in parts] == [LookPart] * 4 and [p.output.shape[1] for p in parts] == [40, 40, 40, 30]
    for part, i in zip(parts, range(0, 150, 40)):
        sl = slice(i, i + 40)
        mine = look_part([y[:, sl] for y in local.layers], [c[sl] for c in local.clean_layers],
                         local.output[:, sl], local.clean_output[sl])
        assert part.output.tobytes() == mine.output.tobytes()
        assert part.clean_output.tobytes() == mine.clean_output.tobytes()
        assert [a.tobytes() for a in part.noise + part.signal] == [a.tobytes() for a in mine.noise + mine.signal]
    joined = LookPart.join(parts)
    assert joined.accuracy(ds.y).tobytes() == local.accuracy.tobytes()
    back = sum(p.output.nbytes + p.clean_output.nbytes + sum(a.nbytes for a in p.noise + p.signal) for p in parts)
    layers = sum(y.nbytes for y in local.layers + local.clean_layers)
    assert back < layers / 4, (back, layers)       # 4 layers of 32, 24, 16, 10 neurons: their values stay there


def test_a_summarised_run_records_nothing(mlp_onnx, digits, client, tmp_path):
    with pytest.raises(HwloopError, match="summarise_sharded records nothing: give no out"):
        summarise_sharded(mlp_onnx, digits.head(20), look_part, repeats=2, out=tmp_path / "s.zarr", client=client)
    assert not (tmp_path / "s.zarr").exists()


def test_a_cnn_check_on_the_workers_equals_the_local_check(cnn_onnx, cluster):
    kw = dict(profile="semenova", data="digits@90", batch_size=30, max_repeats=8, seed=2, max_flip_rate=0.0)
    local = check_model(cnn_onnx, **kw)
    dask = check_model(cnn_onnx, scheduler=cluster.scheduler_address, **kw)
    assert dask.repeats == local.repeats and dask.decision == local.decision
    assert dask.accuracy.tobytes() == local.accuracy.tobytes()
    assert [(a.snr_db, a.clipped) for a in dask.layers] == [(a.snr_db, a.clipped) for a in local.layers]
    assert np.isfinite([a.snr_db for a in local.layers]).all()     # the noise did act on every layer
    assert dask.to_dict() == local.to_dict()
