"""exporters.handbuilt: the one writer of hand-built graphs: types of constants, checking, a file onnxruntime runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exporters.handbuilt import initializer, onnx_model, write_onnx


def test_constants_keep_integers_and_make_floats_float32():
    assert initializer("f", [0.5, 2]).data_type == TensorProto.FLOAT
    assert initializer("d", np.ones(3, np.float64)).data_type == TensorProto.FLOAT
    assert initializer("i", np.array([1, -1])).data_type == TensorProto.INT64
    assert initializer("i32", np.array([5, 3], np.int32)).data_type == TensorProto.INT32


def test_written_graph_runs_in_onnxruntime(tmp_path):
    w = np.arange(12, dtype=np.float64).reshape(3, 4) / 10
    path = write_onnx(tmp_path / "g.onnx", [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
                      {"x": ["batch", 4]}, {"y": ["batch", 3]}, {"W": w, "b": [1.0, 0.0, -1.0]})
    model = onnx.load(path)
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    x = np.ones((2, 4), np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w.T + [1.0, 0.0, -1.0], rtol=1e-6)


def test_a_wrong_graph_is_refused_unless_asked_not_to_check():
    nodes = [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)]          # W (3, 5) does not fit x (batch, 4)
    with pytest.raises(onnx.shape_inference.InferenceError, match="Dimension mismatch"):
        onnx_model(nodes, {"x": ["batch", 4]}, {"y": ["batch", 3]}, {"W": np.ones((3, 5))})
    model = onnx_model(nodes, {"x": ["batch", 4]}, {"y": ["batch", 3]}, {"W": np.ones((3, 5))}, check=False,
                       domains=["lab.ops"], opset=21)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21), ("lab.ops", 1)]
