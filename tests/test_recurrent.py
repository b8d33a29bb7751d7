"""Recurrent nets (ONNX LSTM, GRU, RNN; ``hwloop.recurrent``, ``hwloop.graph.recurrent_ops``): each time
step's products on devices, the cell arithmetic on the host, noise in every step; nodes it cannot map named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from exporters.handbuilt import write_onnx
from exporters.torch_onnx import export_torch
from exporters.zoo import build
from hwloop.data import Dataset
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.runner import run_model
from tests.test_graph_zoo import TOL, tokens


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
def test_recurrent_nets_step_their_products_on_devices(tmp_path, cell, bidirectional):
    import onnxruntime as ort

    m = build("sequence", cell=cell, bidirectional=bidirectional, layers=2)
    path = export_torch(m, tmp_path / "seq.onnx", torch.zeros(2, 7, 6), dynamo=False)
    model = load_model(path)
    assert model.summary() == "5 analog layers on devices (5 of the model's 5 matrix products)"           # (W, R) x 2 stacked layers + the head
    rec = [L for L in model.layers if L.recurrent is not None]
    assert len(rec) == 2 and all(L.groups == (2 if bidirectional else 1) for L in rec)
    x = tokens(10, t=7, f=6)
    res = run_model(model, Dataset("t", x, np.zeros(10, np.int64), 4), repeats=2, batch_size=4)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(res.output[1], want, atol=TOL, rtol=TOL)


def test_lstm_noise_enters_every_time_step(tmp_path):
    """Under semenova, every step's recurrent product draws fresh noise, carried by the state: the spread of h_t
    grows from the first step on, and the draws of two steps differ."""
    from hwloop.devices.emulator import emulators
    from hwloop.profiles import load_profile

    path = export_torch(build("sequence", cell="LSTM", hidden=16), tmp_path / "lstm.onnx", torch.zeros(2, 12, 6))
    model = load_model(path)
    x = tokens(30, t=12, f=6)
    res = run_model(model, Dataset("t", x, np.zeros(30, np.int64), 4),
                    devices=emulators(load_profile("semenova"), model.layers), repeats=200, batch_size=30)
    y = res.layers[1].reshape(200, 30, 12, 16)                      # the recurrent layer's h_t, per step
    var = y.var(axis=0).mean(axis=(0, 2))
    # noise accumulates over the first steps, then the contracting gates hold it (~0.5% estimation error here)
    assert var[3] > 1.2 * var[0] and np.all(np.diff(var[:4]) > 0), var
    d0, d1 = y[:, :, 0] - y[:, :, 0].mean(0), y[:, :, 1] - y[:, :, 1].mean(0)
    assert abs(np.corrcoef(d0.ravel(), d1.ravel())[0, 1]) < 0.9      # not the same draw replayed each step


def _rnn_model(tmp_path, **node_attrs):
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((1, 4, 3)), "R": rng.standard_normal((1, 4, 4))}
    inputs = ["x", "W", "R"]
    if "lens" in node_attrs:
        inits["L"] = np.array(node_attrs.pop("lens"), np.int32)
        inputs += ["", "L"]
    inits["s"] = np.array([2, 4], np.int64)
    return write_onnx(tmp_path / "rnn.onnx", [
        helper.make_node("RNN", inputs, ["y", "yh"], hidden_size=4, name="rnn", **node_attrs),
        helper.make_node("Flatten", ["yh"], ["f"], axis=0),
        helper.make_node("Reshape", ["yh", "s"], ["out"])], {"x": [5, 2, 3]}, {"out": [2, 4]}, inits, check=False)


@pytest.mark.parametrize("attrs,why", [({"direction": "reverse"}, r"direction=reverse: hwloop maps forward and "
                                                                  r"bidirectional RNN nodes"),
                                       ({"lens": [5, 3]}, r"sequence_lens: hwloop maps RNN nodes without them"),
                                       ({"clip": 2.0}, r"clip: hwloop maps RNN nodes without them")])
def test_recurrent_node_it_cannot_map_is_named(tmp_path, attrs, why):
    with pytest.raises(HwloopError, match=r"node 'rnn' \(RNN\): " + why):
        load_model(_rnn_model(tmp_path, **attrs))
