"""``hwloop walk`` on scikit-learn classifiers exported by skl2onnx with their label and (ZipMap'd)
probability outputs: the model is cut to its label output, which is scored as the label itself."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression

from hwloop.cli import main as cli
from hwloop.data import load_data
from hwloop.walking.evaluate import SiteModel, accuracy
from hwloop.walking.sweep import open_sweep


def test_walk_runs_a_label_and_probability_classifier(tmp_path, digits, capsys):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    train = load_data("digits+train")
    clf = LogisticRegression(max_iter=300).fit(train.x, train.y)
    path = tmp_path / "logreg.onnx"
    onnx.save(convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))]), path)
    assert len(onnx.load(str(path)).graph.output) == 2                      # label + probabilities
    sm = SiteModel(path)
    assert [o.name for o in sm.proto.graph.output] == [sm.output] and sm.output == "output_label"
    x = digits.x[:200].astype(np.float32)
    label = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {sm.input: x})[0]
    clean = sm.run({}, np.random.default_rng(0), x=x)                      # no noise: onnxruntime's labels
    np.testing.assert_array_equal(clean.reshape(-1), label)
    assert accuracy(clean, digits.y[:200]) == float(np.mean(label == digits.y[:200])) > 0.85
    out = tmp_path / "w.zarr"
    assert cli(["walk", str(path), "--mode", "global", "--sigmas", "0.001,100", "--data", "digits@200",
                "--repeats", "2", "--out", str(out)]) == 0
    acc = open_sweep(out).accuracy.values[0]
    assert acc[0].min() > 0.85 and acc[1].max() < 0.5                       # noise costs accuracy, as it should
