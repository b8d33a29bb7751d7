"""Execution: with the ideal device every recorded layer equals onnxruntime; repetitions carry through."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exporters.handbuilt import onnx_model, write_onnx
from hwloop.data import Dataset
from hwloop.devices import Emulator
from hwloop.devices.emulator import emulators
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model
from hwloop.store import open_run

MODELS = ["mlp_onnx", "mlp_dynamo_onnx", "cnn_onnx", "cnn_dynamo_onnx", "mlp_bn_onnx", "skl_mlp_onnx",
          "handbuilt_onnx", "demo_onnx"]
TOL = 1e-5   # float32: the same products summed in a different order differ by a few ulp


def reference(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """onnxruntime on the whole original graph, with every analog layer's output exposed too."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    names = [L.output for L in model.layers] + [model.output_name]
    have = {o.name for o in proto.graph.output}
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {model.input_name: x})))


def digits_for(model, digits: Dataset) -> np.ndarray:
    return digits.x.reshape((len(digits),) + tuple(model.input_shape)).astype(np.float32)


@pytest.mark.parametrize("fixture", MODELS)
def test_ideal_run_equals_onnxruntime(fixture, request, digits):
    model = load_model(request.getfixturevalue(fixture))
    ref = reference(model, digits_for(model, digits))
    res = run_model(model, digits, repeats=2, batch_size=128)   # 539 samples: the last batch is short
    assert res.output.shape == (2, len(digits), model.n_classes)
    np.testing.assert_allclose(res.output, np.broadcast_to(ref[model.output_name], res.output.shape), atol=TOL)
    np.testing.assert_allclose(res.clean_output, ref[model.output_name], atol=TOL)
    for layer, rec, clean in zip(model.layers, res.layers, res.clean_layers):
        want = ref[layer.output].reshape(len(digits), -1)   # a conv's neurons: C_out x H' x W', flattened
        np.testing.assert_allclose(rec[1], want, atol=TOL, err_msg=layer.name)
        np.testing.assert_allclose(clean, want, atol=TOL, err_msg=layer.name)
    pred = ref[model.output_name].argmax(1)
    np.testing.assert_allclose(res.accuracy, [(pred == digits.y).mean()] * 2)


def test_recorded_store_equals_onnxruntime(cnn_onnx, digits, tmp_path):
    model = load_model(cnn_onnx)
    ref = reference(model, digits_for(model, digits))
    run_model(model, digits, repeats=3, batch_size=100, out=tmp_path / "r.zarr")
    run = open_run(tmp_path / "r.zarr")
    assert run.complete and run.layer(0).shape == (3, len(digits), 8 * 8 * 8)
    np.testing.assert_allclose(run.output.values[2], ref[model.output_name], atol=TOL)
    np.testing.assert_allclose(run.clean(1).values, ref[model.layers[1].output].reshape(len(digits), -1), atol=TOL)
    np.testing.assert_array_equal(run.labels.values, digits.y)
    assert run.attrs["model_sha256"] == model.sha256 and run.attrs["repeats"] == 3


def conv_model(tmp_path, name: str, in_shape: tuple, w_shape: tuple, **attrs):
    """x -> Conv(attrs) -> Relu -> Flatten -> Gemm(-> 4 classes), random fixed weights."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal(w_shape).astype(np.float32)
    probe = onnx_model([helper.make_node("Conv", ["x", "W"], ["c"], **attrs)], {"x": (1,) + in_shape}, {"c": None},
                       {"W": w}, check=False)
    out_dims = [d.dim_value for d in onnx.shape_inference.infer_shapes(probe).graph.output[0].type.tensor_type.shape.dim]
    flat = int(np.prod(out_dims[1:]))
    inits = {"W": w, "B": rng.standard_normal(w_shape[0]), "G": rng.standard_normal((4, flat)) / np.sqrt(flat)}
    return write_onnx(tmp_path / f"{name}.onnx", [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **attrs),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["y"], transB=1, name="readout")],
        {"x": ("batch",) + in_shape}, {"y": ("batch", 4)}, inits, name="conv")


CONVS = {
    "stride_pad": ((2, 7, 6), (3, 2, 3, 3), dict(strides=[2, 1], pads=[1, 0, 2, 1])),
    "dilation": ((2, 9, 9), (3, 2, 2, 3), dict(dilations=[2, 3])),
    "group": ((4, 5, 5), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "same_upper": ((1, 6, 5), (2, 1, 2, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "conv1d": ((3, 11), (4, 3, 3), dict(strides=[2], pads=[1, 2])),
}


@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_geometries_equal_onnxruntime(case, tmp_path):
    in_shape, w_shape, attrs = CONVS[case]
    model = load_model(conv_model(tmp_path, case, in_shape, w_shape, **attrs))
    assert [L.op for L in model.layers] == ["Conv", "Gemm"] and model.layers[0].activation == "relu"
    rng = np.random.default_rng(8)
    ds = Dataset("random", rng.standard_normal((20,) + in_shape).astype(np.float32), rng.integers(0, 4, 20), 4)
    ref = reference(model, ds.x)
    res = run_model(model, ds, batch_size=7)
    np.testing.assert_allclose(res.layers[0][0], ref[model.layers[0].output].reshape(20, -1), atol=TOL)
    np.testing.assert_allclose(res.output[0], ref["y"], atol=TOL)


def dag_model(tmp_path):
    """Skips over layers: the input and layer 0 both reach the readout (Concat), layer 1 adds onto layer 0."""
    rng = np.random.default_rng(9)
    inits = {f"W{i}": rng.standard_normal(s) / np.sqrt(s[0]) for i, s in ((1, (6, 8)), (2, (8, 8)), (3, (14, 3)))}
    inits.update(st=np.array([0]), en=np.array([8]), ax=np.array([1]))
    return write_onnx(tmp_path / "dag.onnx", [
        helper.make_node("Gemm", ["x", "W1"], ["a1"], name="g1"),
        helper.make_node("Tanh", ["a1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "W2"], ["a2"], name="g2"),
        helper.make_node("Sigmoid", ["a2"], ["h2"]),
        helper.make_node("Add", ["h2", "h1"], ["s"], name="skip_add"),
        helper.make_node("Slice", ["s", "st", "en", "ax"], ["s8"], name="slice"),
        helper.make_node("Concat", ["x", "s8"], ["cat"], axis=1, name="cat_input"),
        helper.make_node("Gemm", ["cat", "W3"], ["y"], name="g3")], {"x": ["batch", 6]}, {"y": ["batch", 3]},
        inits, name="dag")


def test_dag_with_skips_equals_onnxruntime_and_carries_repeats(tmp_path):
    model = load_model(dag_model(tmp_path))
    assert [L.name for L in model.layers] == ["g1", "g2", "g3"]
    rng = np.random.default_rng(10)
    ds = Dataset("random", rng.standard_normal((30, 6)).astype(np.float32), rng.integers(0, 3, 30), 3)
    ref = reference(model, ds.x)
    res = run_model(model, ds, repeats=3, batch_size=8)
    np.testing.assert_allclose(res.output, np.broadcast_to(ref["y"], res.output.shape), atol=TOL)
    # noise on layer 0 only: the glue mixes 1-repetition input with 3-repetition layers, and every later
    # layer sees each repetition of layer 0
    noisy = run_model(model, ds, repeats=3, batch_size=8, devices={0: Emulator(load_profile("semenova"))})
    for k in range(3):
        assert noisy.layers[k].std(axis=0).min() > 0, k
        np.testing.assert_allclose(noisy.clean_layers[k], res.clean_layers[k], atol=TOL)


def test_noise_accumulates_through_repetitions_and_seed_fixes_it(demo_onnx, digits):
    profile = load_profile("semenova")
    data = digits.head(64)
    model = load_model(demo_onnx)
    runs = [run_model(model, data, repeats=4, seed=s, batch_size=16,
                      devices={k: Emulator(profile) for k in range(3)}) for s in (5, 5, 6)]
    a, b, c = runs
    for k in range(3):
        assert a.layers[k].tobytes() == b.layers[k].tobytes()          # same seed, same numbers
        assert a.layers[k].tobytes() != c.layers[k].tobytes()
        assert np.all(a.layers[k].std(axis=0).mean() > 0)
    ideal = run_model(model, data, repeats=1, batch_size=16)
    for k in range(3):   # the reference pass stays noise-free whatever the devices do
        np.testing.assert_allclose(a.clean_layers[k], ideal.layers[k][0], atol=TOL)


def test_one_device_shared_by_every_layer(handbuilt_onnx, digits):
    model = load_model(handbuilt_onnx)
    data = digits.head(50)
    shared = run_model(model, data, devices=Emulator(), batch_size=20)
    alone = run_model(model, data, batch_size=20)
    np.testing.assert_array_equal(shared.output, alone.output)
    profile = load_profile("semenova")   # a shared noisy device is reprogrammed per layer, reproducibly
    one = run_model(model, data, devices=Emulator(profile), repeats=2, seed=3, batch_size=20)
    two = run_model(model, data, devices=Emulator(profile), repeats=2, seed=3, batch_size=20)
    assert one.output.tobytes() == two.output.tobytes()


def test_bad_inputs_are_named(cnn_onnx, mlp_onnx, digits):
    model = load_model(mlp_onnx)
    wide = Dataset("wide", np.zeros((4, 65), np.float32), np.zeros(4, np.int64), 10)
    with pytest.raises(HwloopError, match=r"data wide has 65 values per sample .* takes 64"):
        run_model(model, wide)
    nan = Dataset("nan", np.full((4, 64), np.nan, np.float32), np.zeros(4, np.int64), 10)
    with pytest.raises(HwloopError, match=r"data nan: input contains NaN"):
        run_model(model, nan)
    with pytest.raises(HwloopError, match=r"devices given for layer\(s\) \[7\]"):
        run_model(model, digits, devices={7: Emulator()})
    with pytest.raises(HwloopError, match="repeats must be at least 1"):
        run_model(model, digits, repeats=0)
    cnn = load_model(cnn_onnx)   # flat 64 -> 1x8x8 is reshaped; 63 values are not
    narrow = Dataset("narrow", np.zeros((4, 63), np.float32), np.zeros(4, np.int64), 10)
    with pytest.raises(HwloopError, match=r"63 values per sample .* takes 64 \(1x8x8\)"):
        run_model(cnn, narrow)


@pytest.mark.mnist
def test_flat_mnist_is_reshaped_for_a_conv_model(tmp_path):
    from hwloop.data import load_data, shared_mnist

    path = shared_mnist()
    if path is None:
        pytest.skip("needs ../shared/data/mnist.npz (or $HWLOOP_MNIST)")
    ds = load_data(f"mnist:{path}@200")
    assert ds.x.shape == (200, 784)   # flat on disk, 1x28x28 in the model
    model = load_model(conv_model(tmp_path, "mnist_conv", (1, 28, 28), (4, 1, 5, 5), strides=[2, 2]))
    ref = reference(model, ds.x.reshape(200, 1, 28, 28))
    ds = type(ds)(ds.name, ds.x, ds.y % 4, 4)     # the toy model has 4 outputs: labels it can name
    res = run_model(model, ds, batch_size=64)
    np.testing.assert_allclose(res.output[0], ref["y"], atol=TOL)


def test_product_of_two_computed_tensors_is_digital_glue(tmp_path):
    """MatMul(h, h) per sample (no constant weight) runs on the host between two analog layers."""
    rng = np.random.default_rng(11)
    inits = {"W1": rng.standard_normal((6, 4)) / 2, "W2": rng.standard_normal((3, 4)) / 2,
             "shape": np.array([-1, 2, 2])}
    write_onnx(tmp_path / "sq.onnx", [
        helper.make_node("Gemm", ["x", "W1"], ["a"], name="g1"),
        helper.make_node("Reshape", ["a", "shape"], ["a3"]),
        helper.make_node("MatMul", ["a3", "a3"], ["sq"], name="square"),
        helper.make_node("Flatten", ["sq"], ["f"]),
        helper.make_node("Gemm", ["f", "W2"], ["y"], transB=1, name="g2")], {"x": ["batch", 6]}, {"y": ["batch", 3]},
        inits, name="sq")
    model = load_model(tmp_path / "sq.onnx")
    assert [L.name for L in model.layers] == ["g1", "g2"]
    assert {r["name"]: r["kind"] for r in model.table()}["square"] == "digital"
    ds = Dataset("random", rng.standard_normal((9, 6)).astype(np.float32), rng.integers(0, 3, 9), 3)
    res = run_model(model, ds, repeats=2, batch_size=4)
    np.testing.assert_allclose(res.output[1], reference(model, ds.x)["y"], atol=TOL)


def test_shape_arithmetic_in_glue_follows_the_repetitions(tmp_path):
    """torch's ``h.view(h.size(0), -1)`` exports a Shape -> Gather -> Concat -> Reshape chain after a Conv:
    it must see R x B rows, and an input-derived term mixed into the output must be broadcast."""
    import torch

    from exporters.torch_onnx import export_torch

    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 3, 3, stride=2), torch.nn.Linear(27, 4)

        def forward(self, x):
            h = torch.tanh(self.conv(x))
            h = h.view(h.size(0), -1)
            return self.fc(h) + x.flatten(1)[:, :4]

    torch.manual_seed(0)
    path = export_torch(ViewNet().eval(), tmp_path / "view.onnx", torch.zeros(2, 1, 7, 7), dynamo=False)
    model = load_model(path)
    assert [(L.op, L.activation) for L in model.layers] == [("Conv", "tanh"), ("Gemm", "linear")]
    assert "Shape" in [r["op"] for r in model.table() if r["kind"] == "digital"]
    rng = np.random.default_rng(12)
    ds = Dataset("random", rng.standard_normal((11, 1, 7, 7)).astype(np.float32), rng.integers(0, 4, 11), 4)
    res = run_model(model, ds, repeats=3, batch_size=4)
    np.testing.assert_allclose(res.output, np.broadcast_to(reference(model, ds.x)["output"], res.output.shape),
                               atol=TOL)


def test_fixed_batch_export_runs_its_batch_size_per_call(tmp_path, digits):
    rng = np.random.default_rng(13)
    w = rng.standard_normal((64, 10)).astype(np.float32)
    write_onnx(tmp_path / "fixed.onnx", [helper.make_node("Gemm", ["x", "W"], ["a"], name="g"),
                                         helper.make_node("Reshape", ["a", "s"], ["y"], name="r")],
               {"x": [1, 64]}, {"y": [1, 10]}, {"W": w, "s": np.array([1, 10])}, name="fixed")
    res = run_model(tmp_path / "fixed.onnx", "digits@20", repeats=2)   # a Reshape to (1, 10): one row per call
    want = digits.x[:20] @ w
    np.testing.assert_allclose(res.output, np.broadcast_to(want, res.output.shape), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("shape, absorbed", [((3, 1, 1), True), ((1, 3, 1, 1), True), ((5,), False),
                                             ((3, 5, 5), False)])
def test_bias_add_after_conv_is_absorbed_only_when_per_channel(shape, absorbed, tmp_path):
    """(N,3,5,5) + c: a bias when c is constant over positions; otherwise the Add is digital glue."""
    rng = np.random.default_rng(14)
    inits = {"W": rng.standard_normal((3, 2, 3, 3)), "bias": rng.standard_normal(shape),
             "G": rng.standard_normal((4, 75)) / 8}
    write_onnx(tmp_path / "cb.onnx", [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Add", ["c", "bias"], ["cb"], name="add"),
        helper.make_node("Flatten", ["cb"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["y"], transB=1, name="readout")],
        {"x": ["batch", 2, 5, 5]}, {"y": ["batch", 4]}, inits, name="cb")
    model = load_model(tmp_path / "cb.onnx")
    assert (model.layers[0].meta["ops"] == "Conv+Add") == absorbed
    ds = Dataset("random", rng.standard_normal((6, 2, 5, 5)).astype(np.float32), rng.integers(0, 4, 6), 4)
    res = run_model(model, ds, batch_size=4)
    np.testing.assert_allclose(res.output[0], reference(model, ds.x)["y"], atol=TOL)


# -- pipelined runs: same numbers, same order, clean stops --------------------------------------
@pytest.mark.parametrize("fixture", ["mlp_onnx", "cnn_onnx", "skl_mlp_onnx"])
def test_pipelined_run_equals_sequential_run(fixture, request, digits, tmp_path):
    """Overlapping the layers across batches changes the schedule, not one number (keyed noise)."""
    model = load_model(request.getfixturevalue(fixture))
    profile = load_profile("semenova")
    data = digits.head(45)
    kw = dict(repeats=3, seed=5, batch_size=8)                     # 6 batches, the last one short
    runs = [run_model(model, data, devices=emulators(profile, model.layers), pipeline=p, **kw)
            for p in (False, True)]
    assert [r.attrs["pipelined"] for r in runs] == [False, True]
    for a, b in zip(runs[0].layers + runs[0].clean_layers + [runs[0].output],
                    runs[1].layers + runs[1].clean_layers + [runs[1].output]):
        np.testing.assert_array_equal(a, b)
    stored = run_model(model, data, devices=emulators(profile, model.layers), pipeline=True,
                       out=tmp_path / "r.zarr", **kw)
    run = open_run(stored.path)
    assert run.complete
    np.testing.assert_array_equal(run.output.values, runs[0].output)
    for k in range(len(model.layers)):
        np.testing.assert_array_equal(run.layer(k).values, runs[0].layers[k])


def test_pipeline_is_automatic_only_for_remote_devices_on_separate_hardware(handbuilt_onnx, digits):
    model = load_model(handbuilt_onnx)
    assert not run_model(model, digits.head(10)).attrs["pipelined"]       # emulators: nothing to wait on

    class Remote(Emulator):          # an emulator declared remote: the runner may overlap it
        remote = True

    piped = run_model(model, digits, devices={0: Remote()})
    assert piped.attrs["pipelined"]      # and batches small enough to keep every stage busy: 4 per stage
    stages = len(model.layers) + 1
    assert piped.attrs["batch_size"] == -(-len(digits) // (4 * stages)) < run_model(model, digits).attrs["batch_size"]
    assert not run_model(model, digits.head(10), devices=Remote()).attrs["pipelined"]   # one unit, every layer
    with pytest.raises(HwloopError, match="cannot pipeline: layers 0 and 1 run on the same device"):
        run_model(model, digits.head(10), devices=Remote(), pipeline=True)


def _trace_pipeline(fail_at=None, interrupt_at=None, n_items=7, n_stages=4):
    """Run ``_pipeline`` with a work function that logs (event, stage, item) in the order things happen."""
    import os
    import signal
    import time

    log = []

    def work(stage, item):
        log.append(("start", stage, item))
        if (stage, item) == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)       # as Ctrl-C: to the process, handled by the main thread
            time.sleep(0.05)
        if (stage, item) == fail_at:
            raise ValueError(f"stage {stage} failed on item {item}")
        time.sleep(0.001 * (1 + (stage * 3 + item) % 4))   # uneven stages: the order must still hold
        log.append(("end", stage, item))

    return work, log


def _check_order(log, n_stages):
    ends = [(s, i) for e, s, i in log if e == "end"]
    for s in range(n_stages):          # each stage takes items in order
        items = [i for t, i in ends if t == s]
        assert items == sorted(items)
    pos = {(s, i): n for n, (e, s, i) in enumerate(log) if e == "start"}
    for (s, i), n in pos.items():      # an item enters a stage only after leaving the one before
        if s:
            assert log.index(("end", s - 1, i)) < n
    return ends


def test_pipeline_keeps_order_and_overlaps():
    from hwloop.runner import _pipeline

    work, log = _trace_pipeline()
    _pipeline(7, 4, work, overlap=True)
    ends = _check_order(log, 4)
    assert sorted(ends) == [(s, i) for s in range(4) for i in range(7)]
    assert log.index(("start", 3, 0)) < log.index(("end", 0, 6))    # the stages overlapped


def test_pipeline_failure_finishes_what_is_downstream_and_stops_upstream():
    from hwloop.runner import _pipeline

    work, log = _trace_pipeline(fail_at=(1, 4))
    with pytest.raises(ValueError, match="stage 1 failed on item 4"):
        _pipeline(7, 4, work, overlap=True)
    ends = _check_order(log, 4)
    done = {i for s, i in ends if s == 3}
    assert done == {0, 1, 2, 3}                   # every item that passed the failed stage is finished
    assert not any(s == 1 and i > 4 for _, s, i in log)     # the failed stage took nothing more
    assert all(("end", s, i) in log for e, s, i in log if e == "start" and (s, i) != (1, 4))   # no half steps


def test_pipeline_ctrl_c_stops_every_stage_after_its_step():
    from hwloop.runner import _pipeline

    work, log = _trace_pipeline(interrupt_at=(0, 3))
    with pytest.raises(KeyboardInterrupt):
        _pipeline(7, 4, work, overlap=True)
    _check_order(log, 4)
    assert all(("end", s, i) in log for e, s, i in log if e == "start")   # every step begun was finished
    assert not any(e == "start" and i >= 5 for e, s, i in log)           # nothing much started after it
