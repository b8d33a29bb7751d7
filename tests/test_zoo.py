"""Models users bring, through real exporters: every weight product reaches a device and the ideal run equals
onnxruntime; what stays digital is listed with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from exporters.torch_onnx import export_torch
from exporters.zoo import build, no_fastpath
from hwloop.data import Dataset
from hwloop.graph import load_model
from hwloop.runner import per_sample, run_model
from tests.test_runner import reference

TOL = 1e-5
PRODUCT_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose", "Einsum")
_PASS = ("Transpose", "Identity", "Reshape", "Cast", "DequantizeLinear", "Constant", "Unsqueeze", "Squeeze")


def weight_products(proto: onnx.ModelProto) -> int:
    """Product nodes with a constant operand (an initializer or a Constant, through reshaping nodes), counted
    on the ONNX graph independently of hwloop's importer."""
    inits = {i.name for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def constant(t: str) -> bool:
        if t in inits:
            return True
        n = producer.get(t)
        return n is not None and n.op_type in _PASS and all(constant(i) for i in n.input if i)

    return sum(1 for n in proto.graph.node if n.op_type in PRODUCT_OPS
               and any(constant(t) for t in n.input[:2]) and not all(constant(t) for t in n.input[:2]))


def check_ideal(path, x: np.ndarray, n_digital: int = 0, repeats: int = 2, batch: int = 7):
    """The ideal run equals onnxruntime on every layer and the output; every weight product is analog."""
    model = load_model(path)
    assert len(model.layers) == weight_products(onnx.load(path)), model.summary()
    assert len(model.digital_products) == n_digital, model.summary()
    ds = Dataset("random", x, np.zeros(len(x), np.int64), model.n_classes or 2)
    ref = reference(model, x)
    res = run_model(model, ds, repeats=repeats, batch_size=batch)
    for layer, rec in zip(model.layers, res.layers):
        np.testing.assert_allclose(rec[-1], per_sample(layer, ref[layer.output], len(x)), atol=TOL, rtol=TOL,
                                   err_msg=layer.name)
    np.testing.assert_allclose(res.output[-1], ref[model.output_name], atol=TOL, rtol=TOL)
    return model


def tokens(n: int = 20, t: int = 8, f: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, f)).astype(np.float32)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_transformer_encoder_classifier(tmp_path, dynamo):
    m = build("transformer")
    with no_fastpath():
        path = export_torch(m, tmp_path / "tx.onnx", torch.zeros(2, 8, 8), dynamo=dynamo)
    model = check_ideal(path, tokens(), n_digital=4)      # Q.K^T and A.V of two layers stay digital
    assert all(L.tmap is not None for L in model.layers[:-1])    # every projection but the head runs per token
    assert sum(1 for L in model.layers if L.tmap is not None and L.tmap.rows) == 2   # out_proj on (tokens*batch, d)
    assert all(p.reason == "product of two activations" for p in model.digital_products)


def test_hugging_face_bert_from_config(tmp_path):
    m = build("hf")
    with no_fastpath():
        path = export_torch(m, tmp_path / "bert.onnx", torch.zeros(2, 8, 16), dynamo=False)
    model = check_ideal(path, tokens(f=16), n_digital=4)
    assert [L.activation for L in model.layers].count("gelu") == 2


def test_inspect_and_run_say_which_products_stay_digital(tmp_path, capsys):
    from hwloop.cli import main

    with no_fastpath():
        path = export_torch(build("transformer", layers=1), tmp_path / "tx.onnx", torch.zeros(2, 8, 8))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "products that stay digital:" in out
    assert out.count("): product of two activations") == 2
    assert "6 of 8 products on devices; 2 stay digital: " in out
    np.savez(tmp_path / "d.npz", x=tokens(6), y=np.zeros(6, np.int64))
    assert main(["run", str(path), "--data", f"npz:{tmp_path / 'd.npz'}", "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("6 of 8 products on devices; 2 stay digital: ") and "product of two activations" in first


def test_every_product_on_a_device_is_said_so(mlp_onnx, capsys):
    from hwloop.cli import main

    assert main(["inspect", str(mlp_onnx)]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 products on devices" in out and "stay digital" not in out
