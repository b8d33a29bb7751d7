"""Every graph output recorded: a torch model with several outputs and skl2onnx classifiers (label +
probabilities, plain or ZipMap'd) run on ideal devices give onnxruntime's outputs; the store holds one
array per graph output, reopened the same; a Dask-sharded run (2 worker processes) records the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporters.sklearn_onnx import export_sklearn, onnx_probabilities
from hwloop.cli import main
from hwloop.data import load_data
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.runner import run_model
from hwloop.store import open_run

#: a noisy run (semenova profile), 2 repetitions, 539 digits test samples in batches of 100
NOISY = ["--data", "digits", "--repeats", "2", "--seed", "5", "--batch-size", "100", "--profile", "semenova"]


class TwoHeads(torch.nn.Module):
    """A trunk and two heads: returns (logits, features, aux): class scores, the trunk's features and a
    second head's scores."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.trunk = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 10)
        self.aux = torch.nn.Linear(32, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x):
        features = torch.relu(self.trunk(x))
        return self.head(features), features, torch.tanh(self.aux(features))


@pytest.fixture(scope="module")
def heads_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "heads.onnx"
    names = ["logits", "features", "aux"]
    torch.onnx.export(TwoHeads().eval(), (torch.zeros(2, 64),), str(path), dynamo=False, input_names=["input"],
                      output_names=names, dynamic_axes={k: {0: "batch"} for k in ["input", *names]})
    return path


@pytest.fixture(scope="module")
def skl_tensor_onnx(tmp_path_factory, skl_mlp) -> Path:
    return export_sklearn(skl_mlp, tmp_path_factory.mktemp("outputs") / "skl.onnx", 64, zipmap=False)


def reference(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime's outputs by name (ZipMap'd probabilities as a (sample, class) array)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {sess.get_inputs()[0].name: x})
    return {n: onnx_probabilities([None, v]) if isinstance(v, list) else np.asarray(v) for n, v in zip(names, outs)}


def assert_like_onnxruntime(run, path: Path, repeats: int) -> None:
    want = reference(path, load_data("digits").x.astype(np.float32))
    assert run.graph_output_names == list(want)
    for name, ref in want.items():
        got = run.graph_output(name)
        assert got.dims[:2] == ("repeat", "sample") and got.shape == (repeats,) + ref.shape, name
        for r in range(repeats):
            if ref.dtype.kind == "f":
                np.testing.assert_allclose(got.values[r], ref, rtol=0, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(got.values[r], ref, err_msg=name)


@pytest.mark.parametrize("fixture", ["heads_onnx", "skl_tensor_onnx", "skl_mlp_onnx"])
def test_every_output_recorded_as_onnxruntime_computes_it(fixture, request, tmp_path):
    path = request.getfixturevalue(fixture)
    out = tmp_path / "run.zarr"
    result = run_model(path, "digits", repeats=2, batch_size=200, out=out)
    stored = open_run(out)
    assert_like_onnxruntime(stored, path, 2)
    kept = run_model(path, "digits", repeats=2, batch_size=200)     # no store: the same, in memory
    assert_like_onnxruntime(kept.run(), path, 2)
    # the scored output is still ``output``, and the accuracy comes from it
    model = load_model(path)
    scored = next(n for n, t in model.recorded_outputs if t == model.output_name)
    np.testing.assert_array_equal(stored.output.values, stored.graph_output(scored).values)
    pred = stored.output.values.argmax(axis=2)
    np.testing.assert_array_equal(result.accuracy, (pred == stored.labels.values).mean(axis=1))


def test_every_head_runs_on_devices(heads_onnx):
    """The importer keeps every output's products and glue, not only the scored output's."""
    model = load_model(heads_onnx)
    assert [(L.n_in, L.n_out) for L in model.layers] == [(64, 32), (32, 10), (32, 3)]
    assert model.summary().startswith("3 analog layers on devices (3 of the model's 3 matrix products)") and not model.unused
    assert [n for n, _ in model.recorded_outputs] == ["logits", "features", "aux"]


def test_stored_outputs_have_named_dims_and_cf_attrs(heads_onnx, tmp_path):
    out = tmp_path / "run.zarr"
    run_model(heads_onnx, "digits", repeats=1, batch_size=128, out=out)
    run = open_run(out)
    features = run.graph_output("features")
    assert features.dims == ("repeat", "sample", "axis_1") and features.shape == (1, 539, 32)
    assert features.attrs["units"] == "a.u." and "features" in features.attrs["long_name"]
    assert list(features.coords["axis_1"].values) == list(range(32))
    with pytest.raises(HwloopError, match="no graph output 'nope'.*logits, features, aux"):
        run.graph_output("nope")


def test_a_noisy_run_records_each_output_per_repetition(heads_onnx, tmp_path, capsys):
    out = tmp_path / "noisy.zarr"
    assert main(["run", str(heads_onnx), *NOISY, "--out", str(out)]) == 0
    assert "graph outputs recorded: logits, features, aux (accuracy from 'logits')" in capsys.readouterr().out
    run = open_run(out)
    ideal = reference(heads_onnx, load_data("digits").x.astype(np.float32))
    for name in ("logits", "features", "aux"):
        got = run.graph_output(name).values
        assert not np.array_equal(got[0], got[1]), f"{name}: the repetitions share their noise"
        assert np.abs(got - ideal[name]).max() > 1e-3, f"{name}: no noise reached this output"


def test_a_sharded_run_records_the_same_outputs(heads_onnx, skl_tensor_onnx, cluster, tmp_path):
    for path in (heads_onnx, skl_tensor_onnx):
        local, sharded = tmp_path / f"{path.stem}-local.zarr", tmp_path / f"{path.stem}-dask.zarr"
        assert main(["run", str(path), *NOISY, "--out", str(local)]) == 0
        assert main(["run", str(path), *NOISY, "--out", str(sharded), "--scheduler", cluster.scheduler_address]) == 0
        one, many = open_run(local), open_run(sharded)
        assert many.graph_output_names == one.graph_output_names == [o.name for o in load_model(path).proto.graph.output]
        for name in one.graph_output_names:
            np.testing.assert_array_equal(many.graph_output(name).values, one.graph_output(name).values)
    kept = run_model(heads_onnx, "digits", repeats=2, seed=5, batch_size=100, scheduler=cluster.scheduler_address)
    alone = run_model(heads_onnx, "digits", repeats=2, seed=5, batch_size=100)
    for name in ("logits", "features", "aux"):      # without a store: every batch's outputs come back
        np.testing.assert_array_equal(kept.graph_outputs[name], alone.graph_outputs[name])
