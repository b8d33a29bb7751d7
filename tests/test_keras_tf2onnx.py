"""Keras models exported by tf2onnx (the ``frameworks`` extra): a dense MLP and a CNN with BatchNormalization
(tf2onnx writes it as per-channel Mul and Add) run with every weight product on a device and match onnxruntime.
Skipped with the reason when tensorflow or tf2onnx is not installed."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

tf = pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install -e '.[frameworks]')")
tf2onnx = pytest.importorskip("tf2onnx", reason="tf2onnx not installed (pip install -e '.[frameworks]')")

import onnx  # noqa: E402

from hwloop.data import Dataset  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.runner import run_model  # noqa: E402

keras = tf.keras
RANDOM = "random_normal"      # nonzero biases and BatchNorm statistics, so tf2onnx keeps every Add


def _export(model, shape: tuple, path) -> str:
    model.output_names = ["output"]
    spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    onnx.save(proto, str(path))
    return str(path)


def _matches_onnxruntime(path: str, x: np.ndarray, n_layers: int) -> None:
    model = load_model(path)
    assert len(model.layers) == n_layers and not model.digital_products, model.summary()
    res = run_model(model, Dataset("k", x, np.zeros(len(x), np.int64), 10), repeats=2, batch_size=7)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(res.output[1], want, atol=1e-5, rtol=1e-5)


def test_keras_mlp(tmp_path):
    tf.random.set_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu", bias_initializer=RANDOM),
                          keras.layers.Dense(10, bias_initializer=RANDOM)])
    x = np.random.default_rng(0).standard_normal((20, 64)).astype(np.float32)
    _matches_onnxruntime(_export(m, (64,), tmp_path / "mlp.onnx"), x, 2)


def test_keras_cnn_with_batch_norm(tmp_path):
    tf.random.set_seed(1)
    bn = keras.layers.BatchNormalization(beta_initializer=RANDOM, gamma_initializer=RANDOM,
                                         moving_mean_initializer=RANDOM, moving_variance_initializer="ones")
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, bias_initializer=RANDOM), bn,
                          keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                          keras.layers.Dense(10, bias_initializer=RANDOM)])
    x = np.random.default_rng(1).standard_normal((20, 8, 8, 1)).astype(np.float32)
    path = _export(m, (8, 8, 1), tmp_path / "cnn.onnx")
    assert {"Mul", "Add"} <= {n.op_type for n in onnx.load(path).graph.node}       # BatchNorm as tf2onnx writes it
    _matches_onnxruntime(path, x, 2)
