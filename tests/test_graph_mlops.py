"""scikit-learn's linear models (ONNX-ML, ``hwloop.graph.mlops``) become analog layers and run like onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from hwloop.data import Dataset
from hwloop.graph import load_model
from hwloop.runner import run_model
from tests.test_graph_zoo import TOL


SKLEARN = ["logistic", "logistic-binary", "linear-svc", "linear-svc-binary", "ridge"]


@pytest.fixture(scope="module")
def sklearn_models(tmp_path_factory):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    from hwloop.data import load_data

    d = load_data("digits+train")
    made = {"logistic": (LogisticRegression(max_iter=300), d.y), "logistic-binary": (LogisticRegression(), d.y % 2),
            "linear-svc": (LinearSVC(), d.y), "linear-svc-binary": (LinearSVC(), d.y % 2),
            "ridge": (Ridge(), d.y.astype(np.float64))}
    out = {}
    for name, (est, y) in made.items():
        est.fit(d.x, y)
        out[name] = tmp_path_factory.mktemp("skl") / f"{name}.onnx"
        onnx.save(convert_sklearn(est, initial_types=[("input", FloatTensorType([None, 64]))]), out[name])
    return out


@pytest.mark.parametrize("name", SKLEARN)
def test_sklearn_linear_models_are_analog_layers(sklearn_models, digits, name):
    import onnxruntime as ort

    from exporters.sklearn_onnx import onnx_probabilities

    path = sklearn_models[name]
    model = load_model(path)
    assert len(model.layers) == 1 and model.layers[0].op == "Gemm" and not model.digital_products
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": digits.x})
    rewritten = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(rewritten.run(None, {"input": digits.x})[0], original[0])   # labels / values
    # a binary model's labels are the parities it was trained on (labels it cannot output are refused)
    data = Dataset(digits.name, digits.x, digits.y % 2, 2) if name.endswith("binary") else digits
    res = run_model(model, data, repeats=1)
    want = onnx_probabilities(original) if len(original) > 1 else original[0]
    np.testing.assert_allclose(res.output[0], np.asarray(want).reshape(res.output[0].shape), atol=TOL, rtol=TOL)
