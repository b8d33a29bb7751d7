"""Exporters: torch (legacy + dynamo) and scikit-learn to ONNX, the demo model, the ``hwloop export`` command.

Tolerances: float32 ONNX vs torch/scikit-learn.  Outputs are O(1) and each is
a sum of at most ~100 products per layer over a few layers; with float32's
eps = 1.2e-7 a different summation order moves them by well under 1e-5.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.demo import train_demo
from exporters.models import CNN, MLP, TFC, LeNet5, seeded
from exporters.sklearn_onnx import export_sklearn, onnx_probabilities
from exporters.torch_onnx import export_torch
from hwloop.cli import main as cli_main
from hwloop.errors import HwloopError

TOL = 1e-5


def run_ort(path, x: np.ndarray) -> list:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def assert_single_file(path) -> None:
    """No sidecar beside ``path`` and every initializer stored inside the file."""
    assert sorted(p.name for p in path.parent.glob(path.name + "*")) == [path.name]
    model = onnx.load(path, load_external_data=False)
    assert model.graph.initializer, "expected weights in the file"
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def batch_dim(value_info) -> onnx.TensorShapeProto.Dimension:
    return value_info.type.tensor_type.shape.dim[0]


@pytest.mark.parametrize("fixture,model_fixture,shape", [
    ("mlp_onnx", "mlp_torch", (64,)),
    ("mlp_dynamo_onnx", "mlp_torch", (64,)),
    ("cnn_onnx", "cnn_torch", (1, 8, 8)),
    ("cnn_dynamo_onnx", "cnn_torch", (1, 8, 8)),
])
def test_torch_export_dynamic_batch_single_file_matches_torch(request, fixture, model_fixture, shape):
    path = request.getfixturevalue(fixture)
    model = request.getfixturevalue(model_fixture)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert batch_dim(proto.graph.input[0]).dim_param and batch_dim(proto.graph.output[0]).dim_param
    assert_single_file(path)
    gen = torch.Generator().manual_seed(11)
    for batch in (1, 5, 33):  # none of them the example's batch of 2
        x = torch.rand((batch, *shape), generator=gen)
        with torch.no_grad():
            want = model(x).numpy()
        got = run_ort(path, x.numpy())[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


def test_cnn_fixture_keeps_batchnorm_with_nontrivial_statistics(cnn_onnx):
    proto = onnx.load(cnn_onnx)
    bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 2
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for bn in bns:
        mean, var = inits[bn.input[3]], inits[bn.input[4]]
        assert np.abs(mean).max() > 0.05 and np.abs(var - 1).max() > 0.05


def test_dynamo_default_writes_sidecar_but_export_torch_gives_one_file(tmp_path):
    # torch 2.13: torch.onnx.export(dynamo=True) defaults to external_data=True, which moves every
    # tensor over 256 bytes to "<name>.onnx.data" (with external_data=False it still does above 1.5 GiB).
    with seeded(0):
        big = MLP([1024, 1024, 10], ["relu", "linear"]).eval()  # 4 MiB of weights
    x = torch.zeros(2, 1024)
    raw = tmp_path / "raw" / "big.onnx"
    raw.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(big, (x,), raw, dynamo=True, verbose=False)
    assert (raw.parent / "big.onnx.data").stat().st_size >= 1024 * 1024 * 4

    one = export_torch(big, tmp_path / "one" / "big.onnx", x, dynamo=True)
    assert_single_file(one)
    assert one.stat().st_size >= 1024 * 1024 * 4

    # Asked for: exactly one sidecar, loadable from where it was moved to.
    ext = export_torch(big, tmp_path / "ext" / "big.onnx", x, dynamo=True, external_data=True)
    assert sorted(p.name for p in ext.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    xr = np.random.default_rng(0).random((3, 1024), dtype=np.float32)
    np.testing.assert_allclose(run_ort(ext, xr)[0], run_ort(one, xr)[0], rtol=0, atol=0)

    # Re-exporting as a single file over it removes the now stale sidecar.
    export_torch(big, ext, x, dynamo=True)
    assert_single_file(ext)


def test_export_refuses_mismatch_and_leaves_nothing(tmp_path):
    class Drifting(torch.nn.Module):
        """Python state changes every call, so the traced graph cannot reproduce a later call."""

        def __init__(self):
            super().__init__()
            self.lin, self.calls = torch.nn.Linear(4, 3), 0

        def forward(self, x):
            self.calls += 1
            return self.lin(x) * self.calls

    out = tmp_path / "drift.onnx"
    with pytest.raises(HwloopError, match=r"drift\.onnx: onnxruntime and torch differ"):
        export_torch(Drifting(), out, torch.zeros(2, 4))
    assert list(tmp_path.iterdir()) == []
    export_torch(torch.nn.Linear(4, 3), out, torch.zeros(2, 4))     # staged beside the target, renamed in
    assert [p.name for p in tmp_path.iterdir()] == ["drift.onnx"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["tfc_bn", "lenet5_bn", "cnn28"])
def test_walking_noise_models_export(tmp_path, name, dynamo):
    with seeded(0):
        model, x = {
            "tfc_bn": lambda: (TFC(batchnorm=True), torch.zeros(2, 1, 28, 28)),
            "lenet5_bn": lambda: (LeNet5(batchnorm=True), torch.zeros(2, 1, 28, 28)),
            "cnn28": lambda: (CNN((1, 28, 28)), torch.zeros(2, 1, 28, 28)),
        }[name]()
    # export_torch itself runs the checker and compares with torch on a batch of 5 (atol tightened here).
    path = export_torch(model, tmp_path / f"{name}.onnx", x, dynamo=dynamo, atol=TOL)
    assert_single_file(path)
    assert run_ort(path, np.zeros((7, 1, 28, 28), np.float32))[0].shape == (7, 10)


def test_models_shapes_and_seeding():
    state = torch.get_rng_state()
    with seeded(3):
        a = MLP([5, 4, 3], ["tanh", "linear"])
    with seeded(3):
        b = MLP([5, 4, 3], ["tanh", "linear"])
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert [type(m).__name__ for m in a] == ["Linear", "Tanh", "Linear"]
    assert TFC()(torch.zeros(3, 784)).shape == (3, 10)
    assert CNN()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="3 activations"):
        MLP([5, 4, 3, 2], ["tanh", "linear"])
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        MLP([5, 4], ["gelu"])


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_sklearn_export_matches_predict_proba(tmp_path, skl_mlp, skl_mlp_onnx, digits, zipmap):
    path = skl_mlp_onnx if zipmap else export_sklearn(skl_mlp, tmp_path / "nozip.onnx", 64, zipmap=False)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ("ZipMap" in ops) == zipmap
    outputs = run_ort(path, digits.x)
    assert isinstance(outputs[1], list) == zipmap
    np.testing.assert_allclose(onnx_probabilities(outputs), skl_mlp.predict_proba(digits.x), rtol=0, atol=TOL)
    np.testing.assert_array_equal(outputs[0], skl_mlp.predict(digits.x))
    assert_single_file(path)


def test_sklearn_export_rejects_other_estimators(tmp_path):
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(HwloopError, match="expected a fitted MLPClassifier, got LogisticRegression"):
        export_sklearn(LogisticRegression(), tmp_path / "x.onnx", 64)


def test_demo_trains_accurately_and_deterministically(tmp_path, demo_onnx, digits):
    pred = run_ort(demo_onnx, digits.x)[0].argmax(axis=1)
    acc = float(np.mean(pred == digits.y))
    assert acc > 0.85, f"demo accuracy {acc:.3f}"
    again, acc_again = train_demo(tmp_path / "demo.onnx", seed=0, verbose=False)
    assert again.read_bytes() == demo_onnx.read_bytes()
    assert acc_again == pytest.approx(acc, abs=1e-12)
    other, _ = train_demo(tmp_path / "demo1.onnx", seed=1, verbose=False)
    w0 = onnx.numpy_helper.to_array(onnx.load(demo_onnx).graph.initializer[0])
    w1 = onnx.numpy_helper.to_array(onnx.load(other).graph.initializer[0])
    assert w0.shape == w1.shape and not np.array_equal(w0, w1)


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "mlp.onnx"
    assert cli_main(["export", "torch-mlp", "--sizes", "8,6,4", "--activations", "tanh", "--out", str(out)]) == 0
    proto = onnx.load(out)
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Tanh", "Gemm"]
    assert cli_main(["export", "torch-mlp", "--sizes", "8,6,4", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["export", "cnn", "--input", "1x8x8", "--batchnorm", "--dynamo", "--overwrite",
                     "--out", str(out)]) == 0
    assert [n.op_type for n in onnx.load(out).graph.node].count("Conv") == 2
    assert cli_main(["export", "torch-mlp", "--sizes", "8,x", "--out", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hwloop export: error: --sizes '8,x': expected comma-separated integers"]
    assert not (tmp_path / "bad.onnx").exists()
    assert cli_main(["export", "tfc", "--overwrite", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_opset_is_honoured(tmp_path, mlp_torch, dynamo):
    path = export_torch(mlp_torch, tmp_path / "m.onnx", torch.zeros(2, 64), dynamo=dynamo, opset=18)
    assert {o.domain: o.version for o in onnx.load(path).opset_import}[""] == 18


def test_ci_script_runs_the_readme_commands():
    """.ci/run executes the two commands the README gives a newcomer; they must stay the same text."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / ".ci" / "run").read_text()
    commands = [line.split("=", 1)[1].strip().strip('"') for line in script.splitlines()
                if line.startswith(("SETUP=", "TESTS="))]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[test]' && .venv/bin/hwloop demo",
        ".venv/bin/python -m pytest -q",
    ]
    readme = (root / "README.md").read_text() if (root / "README.md").exists() else ""
    for cmd in commands:
        assert cmd in readme, f"README.md lacks the command .ci/run runs: {cmd}"
