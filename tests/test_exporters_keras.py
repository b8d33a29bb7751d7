"""Keras models exported by tf2onnx (the ``frameworks`` extra): a dense MLP and a CNN with BatchNormalization
(tf2onnx writes it as per-channel Mul and Add) run with every weight product on a device and match onnxruntime.
The export runs in a process of its own (``exporters.keras_onnx``), so tensorflow never loads into the test
session; skipped with the reason when tensorflow or tf2onnx is not installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hwloop.data import Dataset
from hwloop.graph import load_model
from hwloop.runner import run_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="tensorflow or tf2onnx not installed (pip install -e '.[frameworks]')")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("keras")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, "-m", "exporters.keras_onnx", str(out)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("name,shape", [("mlp", (64,)), ("cnn", (8, 8, 1))])
def test_keras_models_match_onnxruntime(keras_models, name, shape):
    path = str(keras_models / f"{name}.onnx")
    if name == "cnn":      # BatchNorm as tf2onnx writes it: per-channel Mul and Add
        assert {"Mul", "Add", "MaxPool"} <= {n.op_type for n in onnx.load(path).graph.node}
    model = load_model(path)
    assert len(model.layers) == 2 and not model.digital_products, model.summary()
    x = np.random.default_rng(1).standard_normal((20,) + shape).astype(np.float32)
    res = run_model(model, Dataset("k", x, np.zeros(len(x), np.int64), 10), repeats=2, batch_size=7)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(res.output[1], want, atol=1e-5, rtol=1e-5)
