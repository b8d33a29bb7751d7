"""The fast path of ``check --analytic``: ``predict_raw`` gives ``predict``'s numbers without the Dataset, the
screen's ADC levels pick the winner the chip's ADC picks, and propagation does not depend on how many
threads share the samples."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from hwloop import cf
from hwloop.analysis.networks import dense_onnx, random_weights
from hwloop.analysis.predict import predict, predict_raw
from hwloop.analysis.propagate import torch_threads
from hwloop.check.screen import _levels
from hwloop.graph import load_model
from hwloop.physics import convert
from hwloop.profiles import Converter, load_profile


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "mlp.onnx"
    return load_model(dense_onnx(path, random_weights((20, 64, 32, 10), seed=3), activations="relu"))


def test_predict_raw_has_predicts_numbers(mlp):
    x = np.random.default_rng(0).uniform(0, 1, (300, 20)).astype(np.float32)
    prof = load_profile("crossbar")
    ds, raw = predict(mlp, prof, x), predict_raw(mlp, prof, x)
    assert raw.method == ds.attrs["method"]
    assert (", ".join(raw.not_modelled) or "none") == ds.attrs["not_modelled"]
    bare = predict_raw(mlp, prof, x, common=False)       # without the common mode: the same variances
    for k, (layer, other) in enumerate(zip(raw.layers, bare.layers)):
        for key in ("mean", "var"):
            np.testing.assert_array_equal(layer[key], cf.layer_array(ds, key, k))
            np.testing.assert_array_equal(other[key], layer[key])
        assert np.isfinite(layer["cm"]).all() and np.isnan(other["cm"]).all()


def test_propagation_is_the_same_on_one_thread_and_on_several(mlp, monkeypatch):
    propagate = importlib.import_module("hwloop.analysis.propagate")    # the package exports a function of that name
    x = np.random.default_rng(1).uniform(0, 1, (256, 20)).astype(np.float32)
    prof = load_profile("semenova")
    with torch_threads(1):
        one = predict_raw(mlp, prof, x).layers
    monkeypatch.setattr(propagate, "_MIN_SHARE", 1)          # every sample worth a thread: the samples split
    with torch_threads(2):
        assert propagate.worth_threads(len(x), 64) == 2
        two = predict_raw(mlp, prof, x).layers
    for a, b in zip(one, two):
        np.testing.assert_allclose(a["var"], b["var"], rtol=1e-12)
        np.testing.assert_array_equal(a["mean"], b["mean"])


@pytest.mark.parametrize("adc", [Converter(bits=8, range=(-1.0, 2.0)), Converter(bits=3, range=(-0.5, 0.5)),
                                 Converter(bits=None, range=(-0.2, 0.3))])
def test_adc_levels_pick_the_winner_the_chip_picks(adc):
    draws = np.random.default_rng(2).normal(0.2, 0.6, (50, 1024, 10)).astype(np.float32)
    chip, levels = draws.copy(), draws.copy()
    convert(chip, adc)
    _levels(levels, adc)
    assert (chip.argmax(axis=2) == levels.argmax(axis=2)).mean() > 1 - 1e-4     # ties and all: the same winner
