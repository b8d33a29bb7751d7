"""Mean-field closed forms: exact on symmetric networks, right on average for random ones, growth classes."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.analysis import MeanField, meanfield_curve, predict
from hwloop.analysis.networks import dense_onnx, random_weights, symmetric_weights
from hwloop.graph import load_model

from helpers import profile

N, D = 100, 1e-3



def test_symmetric_network_closed_forms():
    n = np.arange(1, 11)
    # C2: correlated noise, slope 1 -> n D (linear growth), slope 0.5 -> 4/3 D (bounded)
    mf = MeanField(N=N, w_mean=1 / N, D_AC=D)
    np.testing.assert_allclose(meanfield_curve(mf, 10)["total"], n * D, rtol=1e-12)
    assert mf.growth == "linear" and mf.gain == pytest.approx(1.0)
    half = MeanField(N=N, w_mean=1 / N, slope2=0.25, D_AC=D)
    assert half.growth == "bounded" and half.fixed_point().sum() == pytest.approx(4 / 3 * D)
    assert meanfield_curve(half, 10)["total"][-1] == pytest.approx(4 / 3 * D, rel=1e-5)
    # C3: uncorrelated noise -> D (1 + (n-1)/N), the growth being all common mode
    c3 = meanfield_curve(MeanField(N=N, w_mean=1 / N, D_A=D), 10)
    np.testing.assert_allclose(c3["total"], D * (1 + (n - 1) / N), rtol=1e-12)
    np.testing.assert_allclose(c3["common"], D * (n - 1) / N, rtol=1e-12, atol=1e-18)
    # slope above 1: geometric growth with ratio g^2
    steep = MeanField(N=N, w_mean=1 / N, slope2=1.44, D_AC=D)
    assert steep.growth == "geometric" and steep.gain == pytest.approx(1.44)
    t = meanfield_curve(steep, 20)["total"]
    assert t[-1] / t[-2] == pytest.approx(1.44, rel=1e-3) and np.isinf(steep.fixed_point()).all()


@pytest.mark.parametrize("kind", ["D_A", "D_AC"])
def test_mean_field_equals_full_prediction_on_symmetric_network(tmp_path, kind):
    model = load_model(dense_onnx(tmp_path / "s.onnx", symmetric_weights(N, 6, 0.8 / N)))
    x = np.random.default_rng(0).uniform(0, 1, (4, N)).astype(np.float32)
    pred = predict(model, profile(**{kind: D}), x)
    mf = meanfield_curve(MeanField(N=N, w_mean=0.8 / N, **{kind: D}), 6)
    # float32 weights 0.8/N carry a relative rounding of ~1e-8
    np.testing.assert_allclose(pred["var_mean"], mf["total"], rtol=1e-6)
    np.testing.assert_allclose(pred["cm_var"], mf["common"], rtol=1e-6, atol=1e-15)


def test_mean_field_describes_random_networks_on_average(tmp_path):
    # Linear layers with W ~ N(0, 0.5/N): gain 0.5, fixed point D / (1 - 0.5) = 2D.
    # The prediction uses the actual weights; row sums of W_ij^2 scatter by
    # sqrt(2/N) = 14% per neuron, 1.4% on the layer mean -> 5% bound.
    w = random_weights([N] * 9, seed=12, std=np.sqrt(0.5 / N))
    model = load_model(dense_onnx(tmp_path / "r.onnx", w))
    x = np.random.default_rng(1).uniform(-1, 1, (4, N)).astype(np.float32)
    pred = predict(model, profile(D_A=D), x)
    mf = MeanField(N=N, w_mean=0.0, w_var=0.5 / N, D_A=D)
    assert mf.growth == "bounded" and mf.fixed_point().sum() == pytest.approx(2 * D)
    np.testing.assert_allclose(pred["var_mean"], meanfield_curve(mf, 8)["total"], rtol=0.05)


def test_correlated_multiplicative_noise_splits_by_signal_moments(tmp_path):
    model = load_model(dense_onnx(tmp_path / "i.onnx", [np.eye(N, dtype=np.float32)]))
    x = np.random.default_rng(2).uniform(0.2, 1.0, (1, N)).astype(np.float32)
    pred = predict(model, profile(D_MC=D), x)
    xm, x2 = float(x.astype(np.float64).mean()), float((x.astype(np.float64) ** 2).mean())
    mf = MeanField(N=N, w_mean=0.0, D_MC=D, x_mean=xm, x2=x2)
    assert pred["var_mean"].item() == pytest.approx(mf.fresh.sum(), rel=1e-6)
    # off-diagonal mean of x_i x_j excludes i = j: differs from x_mean^2 by O(1/N)
    assert pred["cm_var"].item() == pytest.approx(mf.fresh[1], rel=2.0 / N)
