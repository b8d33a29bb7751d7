"""The logits' covariance from their Jacobians (``hwloop.analysis.logits``): the clean pass is the model's,
the covariance is the exact propagation's where both are exact, samples may go in chunks, and models
outside the differentiable glue fall back to the general prediction."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from exporters.handbuilt import write_onnx
from hwloop.analysis import logits
from hwloop.analysis.logits import Outside, logit_moments
from hwloop.analysis.predict import layer_noises
from hwloop.check.screen import _contrast_moments, _moments
from hwloop.feeds import model_inputs
from hwloop.data import Dataset
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from tests.test_runner import CONVS, TOL, conv_model, reference

#: additive noise only (independent, correlated within 2-column tiles of a device row) and weight read noise:
#: the first-order covariance is then the exact one, up to the read noise's second-order input term
ADDITIVE = """
name: additive
version: 1
provenance: {source: assumption}
noise: {units: std, D_A: 0.05, D_AC: 0.03}
weights: {read_noise: 0.01}
array: {cols: 2}
"""


@pytest.fixture(scope="module")
def additive(tmp_path_factory):
    path = tmp_path_factory.mktemp("prof") / "additive.yaml"
    path.write_text(ADDITIVE)
    return load_profile(path)


def _inputs(model, n: int = 20, seed: int = 8) -> dict[str, np.ndarray]:
    shape = tuple(model.input_shape)
    x = np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)
    return model_inputs(model, Dataset("random", x, np.zeros(n, np.int64), 4))


@pytest.mark.parametrize("case", sorted(CONVS))
def test_conv_geometries_give_the_models_logits_and_the_exact_covariance(case, additive, tmp_path):
    in_shape, w_shape, attrs = CONVS[case]
    model = load_model(conv_model(tmp_path, case, in_shape, w_shape, **attrs))
    feeds = _inputs(model)
    noises, _ = layer_noises(model.layers, [additive] * len(model.layers))
    mean, cov, clipped = logit_moments(model, noises, feeds)
    np.testing.assert_allclose(mean, reference(model, feeds["x"])["y"], atol=TOL)
    assert not clipped
    exact_mean, exact, _ = _contrast_moments(model, [additive] * len(model.layers), feeds)
    np.testing.assert_allclose(mean, exact_mean, atol=TOL)
    # read noise: the exact path adds the input's own variance to ||x||^2 (second order): 1e-3 relative
    np.testing.assert_allclose(cov, exact, rtol=2e-3, atol=1e-6 * np.abs(exact).max())
    assert (np.linalg.eigvalsh(cov) > -1e-9).all()


def test_samples_in_chunks_give_the_same_numbers(additive, tmp_path, monkeypatch):
    in_shape, w_shape, attrs = CONVS["stride_pad"]
    model = load_model(conv_model(tmp_path, "c", in_shape, w_shape, **attrs))
    feeds = _inputs(model, n=23)
    noises, _ = layer_noises(model.layers, [additive] * len(model.layers))
    whole = logit_moments(model, noises, feeds)
    monkeypatch.setattr(logits, "_BUDGET", 5 * model.layers[-1].n_out * sum(l.n_out * l.positions
                                                                             for l in model.layers))
    chunked = logit_moments(model, noises, feeds)                 # chunks of 5 samples
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-9)


def _sine_model(tmp_path):
    """x -> Gemm -> Relu -> Sin (glue outside the differentiable table) -> Gemm (4 classes)."""
    rng = np.random.default_rng(4)
    inits = {"W1": rng.standard_normal((6, 8)) / 2.5, "W2": rng.standard_normal((8, 4)) / 3}
    return write_onnx(tmp_path / "sine.onnx", [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="hidden"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Sin", ["r"], ["s"], name="sine"),
        helper.make_node("MatMul", ["s", "W2"], ["y"], name="readout")],
        {"x": ("batch", 6)}, {"y": ("batch", 4)}, inits, name="sine")


def test_a_model_outside_the_glue_table_takes_the_general_prediction(additive, tmp_path):
    model = load_model(_sine_model(tmp_path))
    feeds = _inputs(model, n=30)
    noises, _ = layer_noises(model.layers, [additive] * len(model.layers))
    with pytest.raises(Outside, match="sine"):
        logit_moments(model, noises, feeds)
    mean, cov, clean = _moments(model, additive, feeds, seed=0)
    want_mean, want, _ = _contrast_moments(model, [additive] * len(model.layers), feeds)
    np.testing.assert_allclose(mean, want_mean)
    np.testing.assert_allclose(cov, want)
    np.testing.assert_array_equal(clean, want_mean.argmax(axis=1))


def test_both_predictions_match_the_sampled_covariance_of_a_conv(additive, tmp_path):
    """Anchored to the emulator: per-patch read noise and correlated terms shared by one position's channels
    within a column tile, in the Jacobians' logit covariance and in ``predict``'s per-layer variances."""
    from hwloop.analysis.predict import predict_raw
    from hwloop.devices.emulator import emulators
    from hwloop.runner import run_model

    in_shape, w_shape, attrs = CONVS["group"]
    model = load_model(conv_model(tmp_path, "g", in_shape, w_shape, **attrs))
    feeds = _inputs(model, n=3)
    repeats = 4000
    run = run_model(model, Dataset("random", feeds["x"], np.zeros(3, np.int64), 4),
                    devices=emulators(additive, model.layers), repeats=repeats, seed=5)
    z = np.asarray(run.layers[-1], np.float64) - np.asarray(run.layers[-1], np.float64).mean(axis=0)
    sampled = np.einsum("rbi,rbj->bij", z, z) / (repeats - 1)
    noises, _ = layer_noises(model.layers, [additive] * len(model.layers))
    _, cov, _ = logit_moments(model, noises, feeds)
    d = np.diagonal(sampled, axis1=1, axis2=2)
    se = np.sqrt((d[:, :, None] * d[:, None, :] + sampled ** 2) / repeats)    # of each sampled covariance
    assert (np.abs(cov - sampled) <= 4 * se + 0.02 * np.abs(sampled)).all()  # 2%: first order (ReLU crossings)
    hidden = np.asarray(run.layers[0], np.float64).var(axis=0, ddof=1)      # (B, C*P) per-neuron variances
    pred = predict_raw(model, additive, feeds["x"]).layers[0]
    var = pred["var"]
    away = np.abs(pred["pre"]) > 4 * np.sqrt(var)        # off the ReLU's kink, where first order holds
    assert away.mean() > 0.5
    assert (np.abs(var - hidden)[away] <= (4 * np.sqrt(2 / repeats) + 0.02) * hidden[away]).all()
