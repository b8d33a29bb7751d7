"""Quantised graphs (QDQ and onnxruntime's dynamic quantisation, ``hwloop.graph.quantized``) run their
dequantised weights on devices."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from hwloop.graph import load_model
from hwloop.runner import run_model
from tests.test_graph_zoo import TOL, weight_products


@pytest.mark.parametrize("how", ["qdq", "dynamic"])
@pytest.mark.parametrize("fixture", ["mlp_onnx", "cnn_dynamo_onnx"])
def test_quantised_graphs_run_their_dequantised_weights(tmp_path, request, digits, fixture, how):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    src = request.getfixturevalue(fixture)
    shape = (1, 8, 8) if "cnn" in fixture else (64,)
    x = digits.x.reshape((-1,) + shape)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 32]} for i in range(0, 128, 32)])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path / f"{how}.onnx"
    if how == "qdq":
        quantize_static(str(src), str(path), Reader(), quant_format=QuantFormat.QDQ)
    else:
        quantize_dynamic(str(src), str(path))
    model = load_model(path)
    assert len(model.layers) == weight_products(onnx.load(src)) and not model.digital_products
    opts = ort.SessionOptions()   # QDQ as written (dequantise, float product, quantise), not fused integer kernels
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    res = run_model(model, digits, batch_size=len(digits))   # dynamic quantisation scales each call's whole batch
    off = ~np.isclose(res.output[0], want, atol=TOL, rtol=TOL)
    # QDQ: a product on a rounding boundary of the QuantizeLinear after it may land one level away (the float
    # sums run in another order); never more than one level, and rarely
    assert off.sum() <= (2 if how == "qdq" else 0), off.sum()
    if off.any():
        levels = np.unique(np.round(np.diff(np.unique(want)), 6))
        np.testing.assert_allclose(np.abs(res.output[0] - want)[off], levels[levels > 0].min(), rtol=1e-3)
    float_layers = load_model(src).layers
    for q, f in zip(model.layers, float_layers):   # 8-bit weights: within half a step of the float ones
        step = np.abs(f.weight).max() / 127
        assert np.abs(q.weight - f.weight).max() <= step
