"""Importing ONNX models: analog layers found, glue kept, bad models refused with one clear message."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from exporters.handbuilt import write_onnx
from hwloop.errors import HwloopError
from hwloop.graph import format_table, load_model

MODELS = ["mlp_onnx", "mlp_dynamo_onnx", "cnn_onnx", "cnn_dynamo_onnx", "mlp_bn_onnx", "skl_mlp_onnx",
          "handbuilt_onnx", "demo_onnx"]


def save(tmp_path, nodes, inits, inputs=None, outputs=None, name="m.onnx", opset=17, domains=()):
    """Write a hand-built graph (unchecked: many are wrong on purpose); default input x (batch, 4), output y (batch, 3)."""
    return write_onnx(tmp_path / name, nodes, inputs or {"x": ["batch", 4]}, outputs or {"y": ["batch", 3]},
                      {k: np.asarray(v, np.float32) for k, v in inits.items()}, opset=opset, domains=domains,
                      check=False)


@pytest.mark.parametrize("fixture", MODELS)
def test_finds_the_expected_analog_layers(fixture, request, expected_layers):
    model = load_model(request.getfixturevalue(fixture))
    got = [(L.op, L.activation, L.n_in, L.n_out) for L in model.layers]
    assert got == expected_layers[fixture]
    assert [L.index for L in model.layers] == list(range(len(got)))
    assert all(L.weight.dtype == np.float32 and L.bias.shape == (L.n_out,) for L in model.layers)


def test_batchnorm_is_folded_into_the_product(cnn_onnx, mlp_bn_onnx):
    for path in (cnn_onnx, mlp_bn_onnx):
        model = load_model(path)
        ops = [L.meta["ops"] for L in model.layers]
        assert any("BatchNormalization" in op for op in ops), ops
        table = model.table()
        assert not any(r["op"] == "BatchNormalization" for r in table)   # no BN left as glue


def test_skl2onnx_output_is_the_class_scores(skl_mlp_onnx):
    model = load_model(skl_mlp_onnx)
    rows = {r["op"]: r["kind"] for r in model.table()}
    # the label output (ArgMax ...) is recorded too, so its glue runs; ZipMap's input is recorded in its place
    assert rows["Softmax"] == "digital" and rows["ZipMap"] == "unused" and rows["ArgMax"] == "digital"
    assert model.n_classes == 10


def test_table_is_aligned_and_complete(cnn_onnx):
    model = load_model(cnn_onnx)
    text = format_table(model.table()).splitlines()
    assert text[0].split() == ["index", "name", "kind", "op", "input", "->", "output", "activation", "weights"]
    analog = [line for line in text if " analog " in line]
    assert len(analog) == 3 and "MaxPool" in "\n".join(text)
    assert "Nx1x8x8 -> Nx8x8x8" in analog[0] and analog[0].rstrip().endswith("72")
    starts = {line.index("analog") for line in analog}
    assert len(starts) == 1   # columns line up


def test_transposed_weight_and_input_are_absorbed(tmp_path):
    """Gemm(transA=1) fed by a Transpose, and MatMul on a weight behind a Transpose node (dynamo style)."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    path = save(tmp_path, [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("Gemm", ["xt", "W1"], ["h"], transA=1, alpha=2.0, name="g"),
        helper.make_node("Transpose", ["W2"], ["W2t"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "W2t"], ["y"], name="mm"),
    ], {"W1": w1, "W2": w2})
    model = load_model(path)
    assert [(L.op, L.input) for L in model.layers] == [("Gemm", "x"), ("MatMul", "h")]
    np.testing.assert_allclose(model.layers[0].weight, 2 * w1.T, rtol=1e-6)
    np.testing.assert_allclose(model.layers[1].weight, w2, rtol=1e-6)


def test_activation_with_two_consumers_stays_digital(tmp_path):
    rng = np.random.default_rng(1)
    path = save(tmp_path, [
        helper.make_node("Gemm", ["x", "W1"], ["a"], name="g1"),
        helper.make_node("Relu", ["a"], ["h"], name="relu"),
        helper.make_node("Add", ["a", "h"], ["s"], name="add"),   # a is read twice: Relu cannot be absorbed
        helper.make_node("Gemm", ["s", "W2"], ["y"], name="g2"),
    ], {"W1": rng.standard_normal((4, 6)), "W2": rng.standard_normal((6, 3))})
    model = load_model(path)
    assert [L.activation for L in model.layers] == ["linear", "linear"]
    kinds = {r["name"]: r["kind"] for r in model.table()}
    assert kinds["relu"] == "digital" and kinds["add"] == "digital"


def test_group_conv_keeps_one_block_per_group(tmp_path):
    w = np.arange(4 * 1 * 2 * 2, dtype=np.float32).reshape(4, 1, 2, 2) + 1
    path = save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["c"], group=2, name="conv"),
                           helper.make_node("Flatten", ["c"], ["y"])], {"W": w},
                inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3, 3])],
                outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])])
    layer = load_model(path).layers[0]
    assert layer.weight.shape == (2, 2, 4) and layer.weight.size == w.size   # no zero block is programmed
    assert (layer.groups, layer.n_out, layer.n_in) == (2, 4, 8)
    dense = layer.dense_weight()
    assert dense.shape == (4, 8)
    np.testing.assert_array_equal(dense[:2, 4:], 0)
    np.testing.assert_array_equal(dense[2:, :4], 0)
    np.testing.assert_array_equal(dense[3, 4:], w[3].reshape(-1))


# -- bad models: one HwloopError naming the file / node and the problem -------------------------------

def test_missing_truncated_and_non_onnx_files(tmp_path, mlp_onnx):
    with pytest.raises(HwloopError, match=r"nope\.onnx: no such model file"):
        load_model(tmp_path / "nope.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp_onnx.read_bytes()[: mlp_onnx.stat().st_size // 2])
    with pytest.raises(HwloopError, match=r"cut\.onnx: (not a readable ONNX model|invalid ONNX model)"):
        load_model(cut)
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(HwloopError, match=r"text\.onnx: not a readable ONNX model"):
        load_model(text)


def test_no_analog_layer(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="r")], {},
                outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    with pytest.raises(HwloopError, match=r"m\.onnx: no analog layer"):
        load_model(path)


def test_op_onnxruntime_cannot_run(tmp_path):
    path = save(tmp_path, [helper.make_node("Gemm", ["x", "W"], ["a"], name="g"),
                           helper.make_node("Mystery", ["a"], ["y"], name="odd", domain="com.example")],
                {"W": np.ones((4, 3))}, domains=["com.example"])
    with pytest.raises(HwloopError, match=r"node 'odd' \(Mystery, domain 'com.example'\).*onnxruntime cannot run"):
        load_model(path)


def test_unmappable_products_are_named(tmp_path):
    path = save(tmp_path, [helper.make_node("Gemm", ["x", "W"], ["y"], transA=1, name="gt")], {"W": np.ones((4, 3))},
                inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, "batch"])])
    with pytest.raises(HwloopError, match=r"node 'gt' \(Gemm\): transA=1"):
        load_model(path)
    path = save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["c"], name="c4"), helper.make_node("Flatten", ["c"], ["y"])],
                {"W": np.ones((3, 4, 1, 1, 1, 1))},
                inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 2, 2, 2, 2])],
                outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 48])])
    with pytest.raises(HwloopError, match=r"node 'c4' \(Conv\): 4-D convolution"):
        load_model(path)


def test_graph_inputs_must_be_tensors(tmp_path):
    seq = helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT, None)
    path = save(tmp_path, [helper.make_node("ConcatFromSequence", ["x"], ["c"], axis=0),
                           helper.make_node("Gemm", ["c", "W"], ["y"])], {"W": np.ones((4, 3))}, inputs=[seq])
    with pytest.raises(HwloopError, match=r"graph input 'x' is not a tensor"):
        load_model(path)
    two = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "z")]
    path = save(tmp_path, [helper.make_node("Add", ["x", "z"], ["s"]), helper.make_node("Gemm", ["s", "W"], ["y"])],
                {"W": np.ones((4, 3))}, inputs=two)
    assert load_model(path).input_names == ["x", "z"]   # several inputs: fed from named arrays
