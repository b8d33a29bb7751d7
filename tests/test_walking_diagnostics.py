"""Learning-dynamics diagnostics: binarisation measure, weight magnitude, weight clamping, seeded training."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.data import load_data
from hwloop.walking.diagnostics import binarization, weight_magnitude
from hwloop.walking.sites import Noise
from hwloop.walking.train import NoisyNet, TrainConfig, build_model, evaluate, state_vector, train


def test_binarization_measure():
    rng = np.random.default_rng(0)
    assert binarization(rng.integers(0, 2, (500, 20)).astype(float)) == 1.0
    # uniform values: 5% at each end of the range -> 0.10; 1e4 draws, sd 0.003, allow 0.02
    assert binarization(rng.random((1000, 10))) == pytest.approx(0.10, abs=0.02)
    const = np.ones((50, 3))
    assert np.isnan(binarization(const))      # no neuron varies: nothing to measure


def net(seed: int = 0) -> NoisyNet:
    module, shape = build_model("tfc", 64, 10, seed)
    return NoisyNet(module, shape)


def test_clamp_bounds_every_weight_and_training_is_seeded():
    data = load_data("digits+train@400")
    clamped = train(net(), data, TrainConfig(epochs=3, clamp=0.05), 1, 2)
    for m in clamped.modules():
        if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 2:
            assert float(m.weight.detach().abs().max()) <= np.float32(0.05)
    a = train(net(), data, TrainConfig(epochs=2), 1, 2)
    b = train(net(), data, TrainConfig(epochs=2), 1, 2)
    np.testing.assert_array_equal(state_vector(a), state_vector(b))    # same seeds, same weights
    c = train(net(), data, TrainConfig(epochs=2), 1, 3)                 # another noise seed, no noise set
    np.testing.assert_array_equal(state_vector(a), state_vector(c))
    noisy = net()
    noisy.noise_at = {1: Noise("additive", 1.0)}
    train(noisy, data, TrainConfig(epochs=2), 1, 2)
    assert not np.array_equal(state_vector(a), state_vector(noisy))
    assert weight_magnitude(a).shape == (4,)


def test_evaluate_with_noise_is_keyed():
    data = load_data("digits@200")
    model = net()
    noise = {3: Noise("additive", 3.0)}
    a, _ = evaluate(model, data, noise, seed=5)
    b, _ = evaluate(model, data, noise, seed=5)
    clean, acts = evaluate(model, data, {}, seed=5, capture=True)
    assert a == b and sorted(acts) == list(range(len(model.sites)))
    assert acts[0].shape == (200, 64) and acts[7].shape == (200, 10)
    assert model.noise_at == {}                # evaluation leaves the model's own settings alone
