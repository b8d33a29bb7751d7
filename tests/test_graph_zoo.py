"""Models users bring, through real exporters: every weight product reaches a device and the ideal run equals
onnxruntime; what stays digital is listed with its reason."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from exporters.torch_onnx import export_torch
from exporters.models import seeded
from exporters.zoo import build, no_fastpath
from hwloop.data import Dataset
from hwloop.errors import HwloopError
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
    assert "6 analog layers on devices (6 of the model's 8 matrix products); 2 stay digital: " in out
    np.savez(tmp_path / "d.npz", x=tokens(6), y=np.zeros(6, np.int64))
    assert main(["run", str(path), "--data", f"npz:{tmp_path / 'd.npz'}", "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("6 analog layers on devices (6 of the model's 8 matrix products); 2 stay digital: ")
    assert "product of two activations" in first


def test_every_product_on_a_device_is_said_so(mlp_onnx, capsys):
    from hwloop.cli import main

    assert main(["inspect", str(mlp_onnx)]) == 0
    out = capsys.readouterr().out
    assert "4 analog layers on devices (4 of the model's 4 matrix products)" in out and "stay digital" not in out


ACTS = {  # torch module -> the activation hwloop must recognise after the Linear
    "leaky_relu": lambda: torch.nn.LeakyReLU(0.1), "prelu": lambda: torch.nn.PReLU(12), "elu": lambda: torch.nn.ELU(0.7),
    "gelu": lambda: torch.nn.GELU(), "gelu_tanh": lambda: torch.nn.GELU("tanh"), "silu": lambda: torch.nn.SiLU(),
    "softplus": lambda: torch.nn.Softplus(), "hard_sigmoid": lambda: torch.nn.Hardsigmoid(),
    "hard_swish": lambda: torch.nn.Hardswish(), "clip": lambda: torch.nn.ReLU6(),
}


def activation_mlp():
    m = build("activations", activations=[f() for f in ACTS.values()])
    with torch.no_grad():   # PReLU slopes differ per neuron (and from its 0.25 default)
        m[3].weight.copy_(torch.linspace(-0.5, 0.9, 12))
    return m


@pytest.mark.parametrize("dynamo,opset", [(False, None), (False, 17), (True, None)],
                         ids=["legacy", "legacy-opset17", "dynamo"])
def test_activations_after_a_product_are_absorbed(tmp_path, dynamo, opset):
    path = export_torch(activation_mlp(), tmp_path / "acts.onnx", torch.zeros(2, 64), dynamo=dynamo, opset=opset)
    x = np.random.default_rng(1).standard_normal((25, 64)).astype(np.float32) * 3
    model = check_ideal(path, x)
    assert [L.activation for L in model.layers] == [*ACTS, "linear"]
    assert model.layers[0].act_params == {"alpha": pytest.approx(0.1)}
    np.testing.assert_allclose(model.layers[1].act_params["slope"], np.linspace(-0.5, 0.9, 12), rtol=1e-6)
    assert model.layers[9].act_params == {"min": 0.0, "max": 6.0}


def test_profile_neurons_without_the_activation_leave_it_to_the_host(tmp_path, capsys):
    """ReLU6 after the device's noise (on the host) gives exact zeros; applied by the neurons, noise lands after it."""
    from hwloop.cli import main
    from hwloop.devices.emulator import emulators, host_activations
    from hwloop.profiles import parse_profile

    m = build("activations", activations=[torch.nn.ReLU6()])
    path = export_torch(m, tmp_path / "relu6.onnx", torch.zeros(2, 64))
    model = load_model(path)
    text = "name: t\nversion: 1\nprovenance: {source: assumption}\nnoise: {units: variance, D_A: 1.0e-2}\n"
    x = np.random.default_rng(2).standard_normal((40, 64)).astype(np.float32)
    ds = Dataset("random", x, np.zeros(40, np.int64), 10)
    zeros = {}
    for acts in (None, "[relu, tanh]"):
        prof = parse_profile(text + (f"transfer: {{activations: {acts}}}\n" if acts else ""), "t.yaml")
        assert len(host_activations(prof, model.layers)) == (1 if acts else 0)
        res = run_model(model, ds, devices=emulators(prof, model.layers), repeats=3)
        zeros[acts] = float(np.mean(res.layers[0] == 0))
        assert res.layers[0].min() >= (0 if acts else -1)
    assert zeros[None] == 0 and zeros["[relu, tanh]"] > 0.2
    (tmp_path / "t.yaml").write_text(text + "transfer: {activations: [relu]}\n")
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(40, np.int64))
    assert main(["run", str(path), "--data", f"npz:{tmp_path / 'd.npz'}", "--profile", str(tmp_path / "t.yaml"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "clip runs on the host after the device (the profile's neurons implement relu)" in out


@pytest.mark.parametrize("name", sorted(ACTS))
def test_prediction_knows_each_activation_slope(name):
    """Noise on the pre-activation reaches the output times the slope squared (first order), for every
    activation the importer absorbs; checked against Monte-Carlo through the activation itself."""
    from hwloop.analysis.predict import LayerNoise, propagate
    from hwloop.layer import AnalogLayer

    rng = np.random.default_rng(3)
    params = {"leaky_relu": {"alpha": 0.1}, "prelu": {"slope": np.linspace(-0.5, 0.9, 6).astype(np.float32)},
              "elu": {"alpha": 0.7}, "hard_sigmoid": {"alpha": 1 / 6, "beta": 0.5}, "clip": {"min": 0.0, "max": 6.0}}
    layer = AnalogLayer(0, "l", "Gemm", rng.standard_normal((6, 5)).astype(np.float32), np.zeros(6, np.float32),
                        activation=name, act_params=params.get(name, {}))
    x = rng.standard_normal((50, 5)) * 2
    d = 1e-6
    got = propagate([layer], [LayerNoise(D_A=d, placement="pre")], x)[0]["var"]
    a = x @ layer.weight.T.astype(np.float64)
    noisy = layer.activate(a[None] + np.sqrt(d) * rng.standard_normal((4000,) + a.shape))
    want = noisy.var(axis=0)
    near = 5 * np.sqrt(d)   # away from kinks (the slope must not change within 5 sd), where first order holds
    keep = (np.abs(layer.slope(a)) > 0.05) & np.isclose(layer.slope(a - near), layer.slope(a + near), rtol=0.01)
    assert keep.mean() > 0.3
    np.testing.assert_allclose(got[keep], want[keep], rtol=0.15)   # 4000 draws: the variance is within ~2.2% (1 sd)


def images(n: int, shape: tuple, seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_mobilenet_blocks_run_depthwise_convs_per_group(tmp_path, dynamo):
    from tests.conftest import randomise_batchnorm

    m = randomise_batchnorm(build("mobilenet", blocks=((16, 1), (24, 2))), seed=1)
    path = export_torch(m, tmp_path / "mb.onnx", torch.zeros(2, 3, 16, 16), dynamo=dynamo, optimize=False)
    model = check_ideal(path, images(9, (3, 16, 16)), batch=4)
    params = sum(p.numel() for n, p in m.named_parameters() if "weight" in n and p.dim() > 1)
    assert sum(L.weight.size for L in model.layers) == params        # programmed = the model's own weights
    depthwise = [L for L in model.layers if L.groups > 1]
    assert [L.groups for L in depthwise] == [96, 96] and all(L.weight.shape[1:] == (1, 9) for L in depthwise)
    assert all(L.activation == "clip" for L in depthwise)             # BatchNorm folded, ReLU6 absorbed


def test_conv_transpose_and_conv3d(tmp_path):
    path = export_torch(build("convs"), tmp_path / "convs.onnx", torch.zeros(2, 2, 6, 6))
    model = check_ideal(path, images(11, (2, 6, 6)))
    assert [L.op for L in model.layers] == ["Conv", "ConvTranspose", "Conv", "Gemm"]
    assert model.layers[1].groups == 2 and model.layers[1].conv.transposed
    assert len(model.layers[2].conv.kernel_shape) == 3 and model.layers[2].activation == "leaky_relu"


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_einsum_and_weight_first_products(tmp_path, dynamo):
    path = export_torch(build("einsum"), tmp_path / "einsum.onnx", torch.zeros(2, 6, 8), dynamo=dynamo)
    model = check_ideal(path, tokens(13, t=6, f=8))
    assert len(model.layers) == 3 and model.layers[0].activation == "tanh"
    assert model.layers[1].tmap.in_perm == (1, 0)                       # W @ x: the columns are the positions


def _einsum_model(tmp_path, eq: str, w_shape: tuple, x_shape=("batch", 4, 5), out_dims=None):
    from onnx import helper

    from exporters.handbuilt import write_onnx

    nodes = [helper.make_node("Einsum", ["x", "W"], ["e"], equation=eq, name="ein"),
             helper.make_node("Flatten", ["e"], ["y"])]
    return write_onnx(tmp_path / "e.onnx", nodes, {"x": list(x_shape)}, {"y": ["batch", out_dims]},
                      {"W": np.ones(w_shape)}, check=False)


@pytest.mark.parametrize("eq,w_shape,why", [
    ("btk,kn->bt", (5, 3), r"sums the weight over an index of its own"),
    ("btk,k->b", (5,), r"sums x over 't' without a weight"),
    ("btt,tn->btn", (4, 3), r"repeats an index in 'btt'"),
])
def test_einsum_that_is_not_a_linear_contraction_is_named(tmp_path, eq, why, w_shape):
    from hwloop.errors import HwloopError

    x_shape = ("batch", 4, 4) if "btt" in eq else ("batch", 4, 5)
    with pytest.raises(HwloopError, match=r"node 'ein' \(Einsum\): equation .* is not a linear contraction of the "
                                          r"input with a weight: " + why):
        load_model(_einsum_model(tmp_path, eq, w_shape, x_shape))


def test_token_ids_and_attention_mask_from_named_arrays(tmp_path):
    """Two integer graph inputs (Hugging Face BERT), fed from an npz with one array per input."""
    import onnxruntime as ort

    from exporters.zoo import HFTokens
    from hwloop.data import load_data

    with seeded(0):
        m = HFTokens().eval()
    ids, mask = torch.randint(0, 32, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    path = tmp_path / "bert_ids.onnx"
    with no_fastpath(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (ids, mask), path, dynamo=False, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes={k: {0: "batch"} for k in
                                                                 ("input_ids", "attention_mask", "logits")})
    rng = np.random.default_rng(5)
    arrays = {"input_ids": rng.integers(0, 32, (15, 8)), "attention_mask": (rng.random((15, 8)) > 0.3).astype(np.int64)}
    np.savez(tmp_path / "tokens.npz", y=rng.integers(0, 3, 15), **arrays)
    model = load_model(path)
    assert model.input_names == ["input_ids", "attention_mask"] and len(model.layers) == 14
    res = run_model(model, load_data(f"npz:{tmp_path / 'tokens.npz'}"), repeats=2, batch_size=4)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, arrays)[0]
    np.testing.assert_allclose(res.output[1], want, atol=TOL, rtol=TOL)
    with pytest.raises(HwloopError, match=r"no array for graph input\(s\) attention_mask of bert_ids\.onnx"):
        np.savez(tmp_path / "ids.npz", y=np.zeros(15), input_ids=arrays["input_ids"])
        run_model(model, load_data(f"npz:{tmp_path / 'ids.npz'}"))


def test_fixed_batch_export_runs_one_sample_per_call(tmp_path, digits):
    import onnxruntime as ort

    with seeded(3):
        m = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).eval()
    path = tmp_path / "fixed.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 64),), path, dynamo=False, input_names=["input"], output_names=["out"])
    model = load_model(path)
    assert model.batch_dim == 1 and "fixed batch size of 1" in model.notes[0]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"input": digits.x[i:i + 1]})[0] for i in range(30)])
    res = run_model(model, digits.head(30), repeats=3, batch_size=8)
    np.testing.assert_allclose(res.output[2], want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float16, 2e-3)])
def test_float64_and_float16_models(tmp_path, digits, dtype, tol):
    """Devices compute in float32 (said in the notes); the comparison tolerance follows the model's dtype."""
    import onnxruntime as ort

    with seeded(4):
        m = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)).eval().to(dtype)
    path = tmp_path / "typed.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(2, 64, dtype=dtype),), path, dynamo=False, input_names=["input"],
                          output_names=["out"], dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}})
    model = load_model(path)
    np_dtype = {torch.float64: np.float64, torch.float16: np.float16}[dtype]
    assert model.input_dtype == np_dtype and "devices compute in float32" in model.notes[-1]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": digits.x.astype(np_dtype)})[0]
    res = run_model(model, digits, repeats=1)
    np.testing.assert_allclose(res.output[0], want, atol=tol, rtol=tol)


def test_several_outputs_one_chosen_for_accuracy(tmp_path, digits):
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(64, 6), torch.nn.Linear(6, 10)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return h, self.b(h)

    with seeded(5):
        m = Two().eval()
    path = tmp_path / "two.onnx"
    with torch.no_grad():
        torch.onnx.export(m, (torch.zeros(2, 64),), path, dynamo=False, input_names=["input"],
                          output_names=["hidden", "scores"],
                          dynamic_axes={k: {0: "batch"} for k in ("input", "hidden", "scores")})
    assert load_model(path).output_name == "hidden"
    model = load_model(path, output="scores")
    assert model.output_names == ["hidden", "scores"] and model.n_classes == 10
    res = run_model(model, digits, repeats=1)
    with torch.no_grad():
        want = m(torch.from_numpy(digits.x))[1].numpy()
    np.testing.assert_allclose(res.output[0], want, atol=TOL, rtol=TOL)
    with pytest.raises(HwloopError, match=r"no tensor 'logits' to take the class scores from \(outputs: hidden, "):
        load_model(path, output="logits")


def test_prediction_matches_monte_carlo_on_a_lenet5_cnn(tmp_path, digits):
    """LeNet-5 (average pooling, as LeCun's subsampling) under semenova: Conv layers written out as Toeplitz
    matrices, correlated noise shared per position; predicted per-layer variance within 10% of 400 draws."""
    from hwloop.analysis.predict import predict
    from hwloop.devices.emulator import emulators
    from hwloop.profiles import load_profile

    model = load_model(export_torch(build("lenet", size=12), tmp_path / "lenet.onnx", torch.zeros(2, 1, 12, 12)))
    assert [L.op for L in model.layers] == ["Conv", "Conv", "Gemm", "Gemm"]
    x = np.pad(digits.x[:40].reshape(-1, 1, 8, 8), ((0, 0), (0, 0), (2, 2), (2, 2))).astype(np.float32)
    prof = load_profile("semenova")
    pred = predict(model, prof, x)
    res = run_model(model, Dataset("digits", x, digits.y[:40], 10), devices=emulators(prof, model.layers),
                    repeats=400)
    for k, layer in enumerate(model.layers):   # 400 draws x 40 samples x many neurons: ~1% estimation error
        np.testing.assert_allclose(float(pred.var_mean[k]), res.layers[k].var(axis=0).mean(), rtol=0.1,
                                   err_msg=layer.name)


def test_prediction_says_why_it_linearises(tmp_path):
    from hwloop.analysis.predict import predict

    with no_fastpath():
        model = load_model(export_torch(build("transformer", layers=1), tmp_path / "tx.onnx", torch.zeros(2, 8, 8)))
    assert str(predict(model, "semenova", tokens(4)).attrs["method"]).endswith(
        "because layer '/embed/MatMul': the prediction supports dense and Conv layers only, not per-token products")
