"""The analytic prediction against Monte-Carlo runs through the real path: ONNX -> runner -> Emulator(profile).

Tolerances: a per-layer mean variance estimated from R repetitions of B
samples has a relative standard error of about sqrt(2 / n_eff), where n_eff =
R * B for correlated (common-mode) noise (one draw per repetition and sample)
and up to R * B * N for uncorrelated noise.  With R = 10,000 and B = 8,
n_eff >= 8e4, so the standard error is <= 0.5% and the 3% / 5% tolerances of
the issue are >= 6 standard errors: a failure means a wrong prediction, not
bad luck.  Seeds are fixed, so every run draws the same numbers anyway.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from exporters.handbuilt import write_onnx
from hwloop.analysis import LayerNoise, analyze_run, average_repeats, predict
from hwloop.analysis.networks import dense_onnx, random_weights, symmetric_weights
from hwloop.analysis.propagate import propagate
from hwloop.data import Dataset, load_data
from hwloop.devices import Emulator
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.layer import activate, activation_slope
from hwloop.profiles import load_profile, parse_profile
from hwloop.runner import run_model

from helpers import profile

N = 100
D = 1e-3



def monte_carlo(model, prof, x: np.ndarray, repeats: int, seed: int = 0):
    """Run ``model`` on inputs ``x`` with one profiled emulator per layer, in memory; returns the RunResult."""
    data = Dataset("inputs", x.astype(np.float32), np.zeros(len(x), np.int64), 10)
    devices = {k: Emulator(prof) for k in range(len(model.layers))}
    return run_model(model, data, devices=devices, repeats=repeats, seed=seed)


def inputs(n_samples: int, n: int = N, seed: int = 1, lo: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, 1.0, (n_samples, n)).astype(np.float32)


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory):
    """Semenova's symmetric network: 6 linear layers of N = 100, all weights 1/N (and 0.5/N: slope 0.5)."""
    d = tmp_path_factory.mktemp("sym")
    return {1.0: load_model(dense_onnx(d / "sym.onnx", symmetric_weights(N, 6))),
            0.5: load_model(dense_onnx(d / "sym05.onnx", symmetric_weights(N, 6, 0.5 / N)))}


@pytest.mark.slow
@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_c2_correlated_noise_accumulates_linearly_or_saturates(symmetric, slope):
    # C2.  A linear layer of slope g feeding equal weights 1/N passes the common
    # mode with gain g^2: var_n = D (1 + g^2 + ... + g^(2(n-1))) = n D for g = 1,
    # -> D / (1 - g^2) = 4/3 D for g = 0.5 (the slope is folded into the weights 0.5/N).
    model, prof, x = symmetric[slope], profile(D_AC=D), inputs(8)
    n = np.arange(1, 7)
    expect = n * D if slope == 1.0 else D * (1 - 0.25 ** n) / 0.75
    pred = predict(model, prof, x)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=10_000))
    np.testing.assert_allclose(pred["var_mean"], expect, rtol=1e-6)
    np.testing.assert_allclose(meas["var_mean"], expect, rtol=0.03)
    np.testing.assert_allclose(meas["cm_var"], expect, rtol=0.03)      # it is all common mode
    if slope == 0.5:
        assert abs(meas["var_mean"].values[-1] / (4 / 3 * D) - 1) < 0.03


@pytest.mark.slow
def test_c3_uncorrelated_noise_turns_common_through_equal_weights(symmetric):
    # C3: var_n = D (1 + (n-1)/N): the (n-1) D/N part is common mode made by the
    # mixing; a prediction that carries only variances gives D (1 + 1/N + 1/N^2 ...)
    # which misses the measured value at n = 6 by ~4% (> 3%) -- checked below.
    model, prof, x = symmetric[1.0], profile(D_A=D), inputs(8)
    n = np.arange(1, 7)
    expect = D * (1 + (n - 1) / N)
    pred = predict(model, prof, x)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=10_000))
    np.testing.assert_allclose(pred["var_mean"], expect, rtol=1e-6)
    np.testing.assert_allclose(meas["var_mean"], expect, rtol=0.03)
    np.testing.assert_allclose(pred["cm_var"], (n - 1) * D / N, rtol=1e-6, atol=1e-15)
    # the common mode is measured too: (n-1) D/N from n_eff = 8e4 -> <= 2% standard error at n >= 2
    np.testing.assert_allclose(meas["cm_var"][1:], ((n - 1) * D / N)[1:], rtol=0.1)
    diagonal_only = D * np.array([sum(N ** -k for k in range(m)) for m in n])
    assert abs(meas["var_mean"].values[-1] / diagonal_only[-1] - 1) > 0.03


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["D_A", "D_M", "D_AC", "D_MC"])
def test_c1_random_sigmoid_mlp_matches_monte_carlo(tmp_path, kind):
    # C1: 6 sigmoid layers of N = 100, W ~ N(0, 1/N), one noise type at D = 1e-3.
    model = load_model(dense_onnx(tmp_path / "mlp.onnx", random_weights([N] * 7, seed=3), activations="sigmoid"))
    prof, x = profile(**{kind: D}), inputs(8, lo=-1.0)
    pred = predict(model, prof, x)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=10_000, seed=5))
    np.testing.assert_allclose(meas["var_mean"], pred["var_mean"], rtol=0.05)
    if kind in ("D_AC", "D_MC"):
        np.testing.assert_allclose(meas["cm_var"], pred["cm_var"], rtol=0.05)


def test_c4_doubling_the_signal_quadruples_the_multiplicative_noise(tmp_path):
    # C4: one linear layer W = I with multiplicative noise only.  The same seed
    # draws the same numbers, and scaling by 2 is exact in floating point, so
    # the measured variance ratio is exactly 4, as is the predicted one.
    model = load_model(dense_onnx(tmp_path / "id.onnx", [np.eye(N, dtype=np.float32)]))
    x = inputs(8, lo=0.2)
    for kind in ("D_M", "D_MC"):
        prof = profile(**{kind: D})
        v1, v2 = (analyze_run(monte_carlo(model, prof, s * x, repeats=500, seed=9))["var_mean"].item()
                  for s in (1.0, 2.0))
        assert v2 / v1 == pytest.approx(4.0, rel=1e-12)
        p1, p2 = (predict(model, prof, s * x)["var_mean"].item() for s in (1.0, 2.0))
        assert p2 / p1 == pytest.approx(4.0, rel=1e-12)
        assert p1 == pytest.approx(D * np.mean(x.astype(np.float64) ** 2), rel=1e-6)
    # additive noise does not care about the signal level
    prof = profile(D_A=D)
    p1, p2 = (predict(model, prof, s * x)["var_mean"].item() for s in (1.0, 2.0))
    assert p1 == p2 == pytest.approx(D)


@pytest.mark.parametrize("k", [4, 16])
def test_c5_averaging_k_repetitions_divides_additive_std_by_sqrt_k(tmp_path, k):
    # C5: 1,600 repetitions of 8 samples x 100 neurons; after averaging groups of
    # k there are 1600/k * 800 >= 8e4 values, so the std is known to ~0.25% and 3% is > 10 errors.
    model = load_model(dense_onnx(tmp_path / "one.onnx", random_weights([N, N], seed=4), activations="tanh"))
    prof, x = profile(D_A=D), inputs(8)
    y = monte_carlo(model, prof, x, repeats=1600, seed=2).layers[0]
    std1 = np.sqrt(np.var(y, axis=0, ddof=1).mean())
    stdk = np.sqrt(np.var(average_repeats(y, k), axis=0, ddof=1).mean())
    assert std1 / stdk == pytest.approx(np.sqrt(k), rel=0.03)
    p1 = predict(model, prof, x)["var_mean"].item()
    pk = predict(model, prof, x, average={0: k})["var_mean"].item()
    assert p1 / pk == pytest.approx(k, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["pre", "both"])
def test_pre_activation_placement_matches_monte_carlo(tmp_path, placement):
    # Noise on the pre-activation is filtered by the slope (tanh: < 1), so the
    # prediction must pass it through diag(f').  n_eff >= R * B = 2.4e4 -> 5% is > 5 errors.
    model = load_model(dense_onnx(tmp_path / "m.onnx", random_weights([N, N, N, N], seed=7), activations="tanh"))
    prof, x = profile(D_A=D, D_MC=D, placement=placement), inputs(8, lo=-1.0)
    pred = predict(model, prof, x)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=3000, seed=3))
    np.testing.assert_allclose(meas["var_mean"], pred["var_mean"], rtol=0.05)
    post = predict(model, profile(D_A=D, D_MC=D), x)
    assert np.all(pred["var_mean"].values != post["var_mean"].values)


def test_adc_quantisation_enters_as_step_squared_over_12(tmp_path):
    # A 6-bit ADC on [-2, 2] (step 4/63 = 0.063) on top of additive noise of
    # std 0.063 (one step, so the rounding error is close to uniform): the
    # quantisation adds step^2/12 = 3.4e-4, 8% of the total, which the
    # Monte-Carlo resolves (n_eff = 2000 * 800 = 1.6e6 -> 0.1% error; 2% bound).
    text = ("version: 1\nprovenance: {source: assumption}\nnoise: {D_A: 4.0e-3}\n"
            "adc: {bits: 6, range: [-2.0, 2.0]}\n")
    prof = parse_profile(text, "adc.yaml")
    model = load_model(dense_onnx(tmp_path / "m.onnx", random_weights([N, N], seed=8), activations="tanh"))
    x = inputs(8, lo=-1.0)
    step = 4.0 / 63
    with_q = predict(model, prof, x)["var_mean"].item()
    without = predict(model, prof, x, quantisation=False)["var_mean"].item()
    assert with_q - without == pytest.approx(step ** 2 / 12, rel=1e-6)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=2000, seed=1))["var_mean"].item()
    assert meas == pytest.approx(with_q, rel=0.02)
    assert abs(meas / without - 1) > 0.05


@pytest.mark.slow
def test_demo_model_prediction_agrees_with_monte_carlo_under_semenova(demo_onnx):
    # The trained demo (sigmoid, tanh, linear) on 40 digits, 2,000 repetitions:
    # n_eff >= 8e4 -> <= 0.5% standard error; the issue asks for 10% per layer.
    model, prof = load_model(demo_onnx), load_profile("semenova")
    data = load_data("digits@40")
    pred = predict(model, prof, data)
    meas = analyze_run(monte_carlo(model, prof, data.x, repeats=2000, seed=11))
    np.testing.assert_allclose(meas["var_mean"], pred["var_mean"], rtol=0.10)
    np.testing.assert_allclose(meas["snr_db_median"], pred["snr_db_median"], atol=0.5)


def test_non_identity_glue_between_layers_is_refused(tmp_path):
    from onnx import helper

    w = np.eye(4, dtype=np.float32)
    nodes = [helper.make_node("Gemm", ["input", "W0", "b0"], ["a0"], name="gemm0", transB=1),
             helper.make_node("Softmax", ["a0"], ["s0"], name="softmax_between"),
             helper.make_node("Gemm", ["s0", "W1", "b1"], ["output"], name="gemm1", transB=1)]
    inits = {"W0": w, "b0": np.zeros(4), "W1": w, "b1": np.zeros(4)}
    write_onnx(tmp_path / "glue.onnx", nodes, {"input": ["b", 4]}, {"output": ["b", 4]}, inits)
    pred = predict(load_model(tmp_path / "glue.onnx"), profile(D_A=D), inputs(3, n=4))   # linearised, said why
    assert re.search("softmax_between.*Softmax", pred.attrs["method"]) and pred.attrs["method"].startswith("linear")


def test_identity_glue_is_accepted(tmp_path):
    # torch exports put Flatten / Reshape before the first Gemm; those are run exactly.
    from onnx import helper

    w = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W0", "b0"], ["a0"], name="gemm0", transB=1),
             helper.make_node("Identity", ["a0"], ["i0"], name="ident"),
             helper.make_node("Gemm", ["i0", "W1", "b1"], ["output"], name="gemm1", transB=1)]
    inits = {"W0": w, "b0": np.zeros(5), "W1": w.T.copy(), "b1": np.zeros(4)}
    write_onnx(tmp_path / "flat.onnx", nodes, {"input": ["b", 2, 2]}, {"output": ["b", 4]}, inits)
    pred = predict(load_model(tmp_path / "flat.onnx"), profile(D_A=D), inputs(3, n=4))
    # layer 2 sees D through W1: D * sum_j W1_ij^2 + D
    expect = D * (np.mean((w.T.astype(np.float64) ** 2).sum(axis=1)) + 1)
    assert pred["var_mean"].values[1] == pytest.approx(expect, rel=1e-6)


def test_predict_cli_prints_table_and_writes_netcdf(demo_onnx, tmp_path, capsys):
    import xarray as xr

    from hwloop.cli import main

    out = tmp_path / "pred.nc"
    assert main(["predict", str(demo_onnx), "--profile", "semenova", "--data", "digits@20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SNR dB" in text and "gemm" in text.lower() or "Gemm" in text
    ds = xr.open_dataset(out, engine="scipy")
    assert ds.sizes["layer"] == 3 and np.all(ds["var_mean"].values > 0)


def test_predict_cli_bad_profile_is_one_line_exit_2(demo_onnx, tmp_path, capsys):
    from hwloop.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nprovenance: {source: assumption}\nnoise: {D_A: -1}\n")
    assert main(["predict", str(demo_onnx), "--profile", str(bad), "--data", "digits@5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml" in err[0]


def test_read_noise_and_column_tiles_match_monte_carlo(tmp_path):
    # Weight read noise (variance read_std^2 ||x||^2 on every product) and a
    # 100-neuron layer split into column tiles of 32: the correlated terms are
    # shared within a tile only, so the common mode of the layer shrinks to
    # about sum_t n_t (n_t - 1) / (N (N - 1)) of its value.  2,000 repetitions
    # of 8 samples: n_eff >= 1.6e4 per tile -> ~1% error; 5% bound.
    text = ("version: 1\nprovenance: {source: assumption}\nnoise: {D_A: 1.0e-4, D_AC: 1.0e-3, D_MC: 1.0e-3}\n"
            "weights: {read_noise: 0.01}\narray: {cols: 32}\n")
    prof = parse_profile(text, "tiles.yaml")
    model = load_model(dense_onnx(tmp_path / "m.onnx", random_weights([N, N, N], seed=9), activations="tanh"))
    x = inputs(8, lo=-1.0)
    pred = predict(model, prof, x)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=2000, seed=4))
    np.testing.assert_allclose(meas["var_mean"], pred["var_mean"], rtol=0.05)
    np.testing.assert_allclose(meas["cm_var"], pred["cm_var"], rtol=0.05)
    untiled = predict(model, parse_profile(text.replace("array: {cols: 32}\n", ""), "t.yaml"), x)
    share = sum(t * (t - 1) for t in (32, 32, 32, 4)) / (N * (N - 1))
    assert pred["cm_var"].values[0] / untiled["cm_var"].values[0] == pytest.approx(share, rel=0.05)


def test_float32_covariance_agrees_with_float64(tmp_path):
    model = load_model(dense_onnx(tmp_path / "m.onnx", random_weights([N] * 5, seed=2), activations="sigmoid"))
    prof, x = load_profile("semenova"), inputs(16, lo=-1.0)
    p64, p32 = predict(model, prof, x), predict(model, prof, x, dtype="float32")
    np.testing.assert_allclose(p32["var_mean"], p64["var_mean"], rtol=1e-4)
    np.testing.assert_allclose(p32["cm_var"], p64["cm_var"], rtol=1e-3)
    with pytest.raises(HwloopError, match="float16"):
        predict(model, prof, x, dtype="float16")


def dense_reference(layers, nz: LayerNoise, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The recursion of docs/analysis.md (post placement) with an explicit N x N covariance per sample."""
    c, out = None, []
    for layer in layers:
        w = layer.weight.astype(np.float64)
        a = x @ w.T + layer.bias
        y = activate(layer.activation, a.copy())
        j = activation_slope(layer.activation, a)[:, :, None] * w
        p = np.zeros((len(x), len(w), len(w))) if c is None else j @ c @ j.transpose(0, 2, 1)
        d = nz.D_A + nz.D_M * (y ** 2 + np.einsum("bii->bi", p)) + nz.shot * np.abs(y) + nz.extra
        c = (1 + nz.D_MC) * p + nz.D_AC + nz.D_MC * y[:, :, None] * y[:, None, :]
        c[:, np.arange(len(w)), np.arange(len(w))] += d
        var = np.einsum("bii->bi", c).copy()
        out.append((var, (c.sum((1, 2)) - var.sum(1)) / (len(w) * (len(w) - 1))))
        x = y
    return out


@pytest.mark.parametrize("sizes", [[30, 100, 100, 100, 7], [30, 100, 100, 100, 100, 7]])
def test_factored_propagation_equals_the_dense_covariance_recursion(tmp_path, sizes):
    # The fast path (factor blocks with lazy right factors composed on the narrow side, diagonals in chunks
    # of samples, the samples shared out to threads; with 5 layers also the fold into a dense part) must be
    # exact: equal to explicit N x N matrices up to rounding.  150 samples of width 100 take those paths.
    acts = ["sigmoid", "tanh"] * 2
    model = load_model(dense_onnx(tmp_path / "m.onnx", random_weights(sizes, seed=5),
                                  activations=acts[:len(sizes) - 2] + ["linear"]))
    nz = LayerNoise(D_A=1e-3, D_M=1e-3, D_AC=1e-4, D_MC=1e-4, shot=1e-4, extra=1e-6)
    x = inputs(150, n=sizes[0], lo=-1.0).astype(np.float64)
    threads = torch.get_num_threads()
    ref = dense_reference(model.layers, nz, x)
    for dtype, rtol in (("float64", 1e-9), ("float32", 1e-4)):
        got = propagate(model.layers, [nz] * len(model.layers), x, dtype=dtype)
        for (var, cm), r in zip(ref, got):
            np.testing.assert_allclose(r["var"], var, rtol=rtol)
            np.testing.assert_allclose(r["cm"], cm, rtol=rtol, atol=rtol * var.max())
    assert torch.get_num_threads() == threads     # the caller's thread setting is restored


def test_nonlinear_glue_between_conv_layers_is_refused_naming_the_node(cnn_onnx):
    model = load_model(cnn_onnx)   # Conv layers are predicted (written out); MaxPool is not linear
    pred = predict(model, profile(D_A=D), np.zeros((2, 64), np.float32))     # linearised, naming the node
    assert re.search(rf"node '.*MaxPool' \(MaxPool\) between analog layers "
                     rf"'{model.layers[0].name}' and '{model.layers[1].name}'.*linear glue", pred.attrs["method"])


def test_adc_clipping_removes_the_noise_of_clipped_outputs(tmp_path):
    # Outputs far beyond the ADC range carry no noise after clipping; inside it
    # the noise passes.  Identity layer, inputs spread over [-2, 2], ADC range
    # [-1, 1] (no quantisation), additive noise std 0.03: about half the
    # outputs are clipped.  n_eff = 2000 * 8 * 100 = 1.6e6 -> 5% is generous.
    text = ("version: 1\nprovenance: {source: assumption}\nnoise: {D_A: 1.0e-3}\n"
            "adc: {range: [-1.0, 1.0]}\n")
    prof = parse_profile(text, "clip.yaml")
    model = load_model(dense_onnx(tmp_path / "id.onnx", [np.eye(N, dtype=np.float32)] * 2))
    x = np.random.default_rng(3).uniform(-2, 2, (8, N)).astype(np.float32)
    pred = predict(model, prof, x)
    meas = analyze_run(monte_carlo(model, prof, x, repeats=2000, seed=6))
    inside = float(np.mean(np.abs(x) < 1))
    assert pred["var_mean"].values[0] == pytest.approx(D * inside, rel=0.05)
    np.testing.assert_allclose(meas["var_mean"], pred["var_mean"], rtol=0.05)
    np.testing.assert_allclose(pred["output_mean"].values[0], np.clip(x, -1, 1), atol=1e-6)
