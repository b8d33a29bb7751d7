"""Convolutions whose height and width the ONNX graph leaves dynamic: the sizes are taken from the data
(the channel count from the weight), so one exported model runs on images of any size."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from hwloop.data import Dataset
from hwloop.devices.emulator import emulators
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model


@pytest.fixture(scope="module")
def dynamic_cnn(tmp_path_factory) -> str:
    """Plain, grouped-strided and transposed convolutions, exported with dynamic batch, height and width."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=2),
                            nn.Tanh(), nn.ConvTranspose2d(8, 4, 2, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 5)).eval()
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch", 2: "h", 3: "w"},
                                                             "output": {0: "batch"}})
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param == "h" and dims[3].dim_param == "w"
    return str(path)


@pytest.mark.parametrize("hw", [(16, 16), (11, 14)])
def test_sizes_come_from_the_data(dynamic_cnn, hw):
    model = load_model(dynamic_cnn)
    assert model.summary() == "4 analog layers on devices (4 of the model's 4 matrix products)"
    x = np.random.default_rng(1).standard_normal((6, 3) + hw).astype(np.float32)
    res = run_model(model, Dataset("r", x, np.zeros(6, np.int64), 5), repeats=2, batch_size=4)
    want = ort.InferenceSession(dynamic_cnn, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(res.output[1], want, atol=1e-5, rtol=1e-5)
    assert res.layers[0].shape == (2, 6, 8 * hw[0] * hw[1])


def test_noisy_run_and_prediction_on_dynamic_sizes(dynamic_cnn):
    """On a noisy emulator the run works as on a fixed-size export; the prediction takes the linearised path
    (the exact one writes a convolution out for one image size) and says why."""
    from hwloop.analysis.predict import predict

    model = load_model(dynamic_cnn)
    x = np.random.default_rng(2).standard_normal((8, 3, 10, 10)).astype(np.float32)
    prof = load_profile("semenova")
    res = run_model(model, Dataset("r", x, np.zeros(8, np.int64), 5), devices=emulators(prof, model.layers),
                    repeats=200, batch_size=8, seed=3)
    pred = predict(model, prof, x)
    assert "known only from the data" in pred.attrs["method"]
    for k in range(len(model.layers)):
        np.testing.assert_allclose(float(pred.var_mean[k]), res.layers[k].var(axis=0, ddof=1).mean(), rtol=0.1)


def test_same_padding_on_an_unknown_size_is_named(tmp_path):
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 2, "h", "w"])
    y = onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", 3])
    w = onnx.numpy_helper.from_array(np.ones((3, 2, 3, 3), np.float32), "W")
    nodes = [onnx.helper.make_node("Conv", ["input", "W"], ["c"], name="same", auto_pad="SAME_UPPER"),
             onnx.helper.make_node("GlobalAveragePool", ["c"], ["p"]), onnx.helper.make_node("Flatten", ["p"], ["output"])]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], initializer=[w])
    path = tmp_path / "same.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    with pytest.raises(HwloopError, match=r"node 'same' \(Conv\): auto_pad=SAME_UPPER with an unknown spatial size"):
        load_model(path)
