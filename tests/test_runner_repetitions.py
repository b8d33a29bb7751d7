"""A deterministic device on identical repetitions computes each layer once: the runner keeps one repetition
(r = 1) until a device's noise makes them differ, and records the R identical copies without computing them."""

from __future__ import annotations

import numpy as np

from hwloop import physics
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.runner import run_model


class Copies(Emulator):
    """The emulator as the runner saw it before: its results materialised, R copies of one value."""

    def run(self, x, *, repeats, key=()):
        return np.array(super().run(x, repeats=repeats, key=key))

    def run_conv(self, x, *, repeats, key=()):
        y = super().run_conv(x, repeats=repeats, key=key)
        return None if y is None else np.array(y)


def test_an_ideal_cnn_computes_each_convolution_once(cnn_onnx, digits, monkeypatch):
    model = load_model(cnn_onnx)
    images = []
    conv = physics.conv

    def counted(x, *args, **kw):
        images.append(len(x))
        return conv(x, *args, **kw)

    monkeypatch.setattr(physics, "conv", counted)
    res = run_model(model, digits, repeats=6, batch_size=100)
    batches = [min(100, len(digits) - lo) for lo in range(0, len(digits), 100)]
    assert sorted(set(images) - {2}) == sorted(set(batches))              # never 6 x a batch (2: the probe)
    monkeypatch.setattr(physics, "conv", conv)
    once = run_model(model, digits, repeats=1, batch_size=100)
    for a, b in zip(res.layers, once.layers):
        assert a.shape[0] == 6 and np.array_equal(a, np.broadcast_to(b, a.shape))
    assert np.array_equal(res.output, np.broadcast_to(once.output, res.output.shape))


def test_noise_after_ideal_layers_draws_what_it_drew_on_copies(cnn_onnx, digits):
    """Ideal first layers, a noisy last one: the same draws as when the ideal layers gave R materialised
    copies (the products then ran on R x B rows: equal up to float32 rounding)."""
    model = load_model(cnn_onnx)
    last = len(model.layers) - 1
    kept = run_model(model, digits, devices={last: Emulator("semenova")}, repeats=4, seed=3, batch_size=128)
    copies = {k: Copies() for k in range(last)} | {last: Copies("semenova")}
    made = run_model(model, digits, devices=copies, repeats=4, seed=3, batch_size=128)
    for a, b in zip(kept.layers, made.layers):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.ptp(kept.layers[last], axis=0).max() > 0.01                # the noise is there, per repetition
