"""scikit-learn ``MLPClassifier`` -> ONNX via skl2onnx, verified against ``predict_proba``.

By default the graph is skl2onnx's own (label + ZipMap'd probabilities), as
users will have it; ``zipmap=False`` gives a plain probability tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx

from hwloop.errors import HwloopError

from .torch_onnx import INPUT, save_onnx, staged


def export_sklearn(clf, path: str | os.PathLike, n_features: int, *, zipmap: bool = True,
                   opset: int | None = None, atol: float = 1e-4, seed: int = 0) -> Path:
    """Convert a fitted ``MLPClassifier`` to ``path``; check it reproduces ``predict_proba`` within ``atol``."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    if not isinstance(clf, MLPClassifier):
        raise HwloopError(f"export_sklearn: expected a fitted MLPClassifier, got {type(clf).__name__}")
    options = None if zipmap else {id(clf): {"zipmap": False}}
    proto = convert_sklearn(clf, initial_types=[(INPUT, FloatTensorType([None, n_features]))],
                            options=options, target_opset=opset)
    with staged(path) as scratch:
        save_onnx(proto, scratch)
        onnx.checker.check_model(str(scratch), full_check=True)
        check_sklearn_export(clf, scratch, n_features, atol=atol, seed=seed, name=str(path))
    return Path(path)


def onnx_probabilities(outputs: list) -> np.ndarray:
    """The (batch, class) probabilities from skl2onnx's outputs, with or without ZipMap."""
    probs = outputs[1]
    if isinstance(probs, list):  # ZipMap: one {class: probability} dict per sample
        return np.array([[d[k] for k in sorted(d)] for d in probs], dtype=np.float32)
    return np.asarray(probs)


def check_sklearn_export(clf, path: str | os.PathLike, n_features: int, *, atol: float = 1e-4,
                         seed: int = 0, batch: int = 37, name: str | None = None) -> float:
    """onnxruntime vs ``clf.predict_proba`` (and labels) on a random [0, 1] batch; returns max |diff|."""
    import onnxruntime as ort

    name = name or str(path)
    x = np.random.default_rng(seed).random((batch, n_features), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {sess.get_inputs()[0].name: x})
    diff = float(np.max(np.abs(onnx_probabilities(outputs) - clf.predict_proba(x))))
    if not diff <= atol:
        raise HwloopError(f"{name}: onnxruntime and predict_proba differ by {diff:.3g} (> {atol:g})")
    if not np.array_equal(np.asarray(outputs[0]), clf.predict(x)):
        raise HwloopError(f"{name}: onnxruntime's labels differ from clf.predict")
    return diff
