"""The emulator's direct convolution (``Emulator.run_conv``) against the unfolded rows a chip sees.

The runner hands a Conv to an emulator whole when no step needs the rows themselves.  Every
deterministic step must then give the numbers of ``run`` on the im2col rows (up to float32
rounding); the noise has the same distribution, a row being one output position, but is drawn
in channel-major order (a stated change of random stream), so it is checked statistically.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import parse_profile
from hwloop.runner import im2col, on_device, run_model
from tests.test_runner import CONVS, conv_model

DETERMINISTIC = """
version: 1
provenance: {source: hand-written, notes: tests/test_devices_emulator_conv.py}
adc: {bits: 8, range: [-4, 4]}
gain_offset: {gain: 0.05, offset: 0.02}
transfer: {function: model, slope: 1.2, scale: 0.9}
drift: {per: repeat, gain: 0.01, offset: 0.01}
array: {cols: 2}
"""
NOISY = DETERMINISTIC.replace("adc: {bits: 8, range: [-4, 4]}\n", "") + \
    "noise: {D_A: 1.0e-3, D_M: 2.0e-3, D_AC: 1.0e-4, D_MC: 1.0e-4, placement: both, shot: 1.0e-3, dither: 0.01}\n"
ROWS_NEEDED = {   # each of these must see the unfolded rows
    "dac": "dac: {bits: 6, range: [-3, 3]}",
    "read noise": "weights: {read_noise: 0.02}",
    "row tiles": "array: {rows: 5}",
}


def rows_path(emu: Emulator, layer, x: np.ndarray, repeats: int, key) -> np.ndarray:
    """What the runner did before run_conv: unfold, run the rows, fold back channel-major."""
    r, b = x.shape[:2]
    cols = im2col(x.reshape(r * b, *x.shape[2:]), layer)
    y = emu.run(cols.reshape(r, -1, layer.n_in), repeats=repeats, key=key)
    return np.ascontiguousarray(np.asarray(y).reshape(repeats, b, -1, layer.n_out).transpose(0, 1, 3, 2)
                                ).reshape(repeats, b, -1)


PLAIN = sorted(c for c in CONVS if CONVS[c][2].get("group", 1) == 1)   # grouped ones go as rows


def assert_close_to_rows(direct: np.ndarray, rows: np.ndarray) -> None:
    diff = np.abs(direct - rows)
    close = diff <= 1e-5 * (1 + np.abs(rows))
    # a value the two sums round to either side of an ADC threshold lands one level (8/255) apart
    assert (close | (np.abs(diff - 8 / 255) < 1e-5)).all() and close.mean() > 0.99


@pytest.mark.parametrize("case", PLAIN)
@pytest.mark.parametrize("r_in", [1, 3])
def test_direct_conv_computes_what_the_rows_compute(case, r_in, tmp_path):
    in_shape, w_shape, attrs = CONVS[case]
    layer = load_model(conv_model(tmp_path, case, in_shape, w_shape, **attrs)).layers[0]
    x = np.random.default_rng(3).standard_normal((r_in, 9, *in_shape)).astype(np.float32)
    for text in (None, DETERMINISTIC):
        emu = Emulator(None if text is None else parse_profile(text, "deterministic"))
        emu.program(layer, seed=5)
        direct = emu.run_conv(x, repeats=3, key=(1, 0, 4))
        assert direct is not None and direct.shape == (3, 9, layer.n_out * int(np.prod(layer.meta["out_spatial"])))
        assert_close_to_rows(direct, rows_path(emu, layer, x, 3, (1, 0, 4)))


def test_grouped_conv_is_refused_and_goes_as_rows(tmp_path):
    """A grouped Conv's (g, o, i) weights are small separate arrays: run_conv refuses, the rows run."""
    in_shape, w_shape, attrs = CONVS["group"]
    layer = load_model(conv_model(tmp_path, "g", in_shape, w_shape, **attrs)).layers[0]
    assert layer.groups == 2 and layer.weight.ndim == 3
    x = np.random.default_rng(3).standard_normal((1, 5, *in_shape)).astype(np.float32)
    for text in (None, DETERMINISTIC):
        emu = Emulator(None if text is None else parse_profile(text, "deterministic"))
        emu.program(layer, seed=5)
        assert emu.run_conv(x, repeats=2, key=(0, 0, 0)) is None
        np.testing.assert_array_equal(on_device(emu, layer, x, 2, key=(0, 0, 0)),
                                      rows_path(emu, layer, x, 2, (0, 0, 0)))


@pytest.mark.parametrize("host", [False, True])
@pytest.mark.parametrize("act", ["leaky_relu", "prelu"])
def test_direct_conv_applies_the_activation_with_its_parameters(act, host, tmp_path):
    """LeakyRelu's alpha and PRelu's per-channel slope reach the direct path (channels, not positions,
    take a per-neuron slope); an activation the neurons lack runs on the host after the ADC, as in run."""
    in_shape, w_shape, attrs = CONVS["stride_pad"]
    layer = load_model(conv_model(tmp_path, "c", in_shape, w_shape, **attrs)).layers[0]
    params = {"alpha": 0.3} if act == "leaky_relu" else {"slope": np.array([0.1, 0.5, 2.0], np.float32)}
    layer = dataclasses.replace(layer, activation=act, act_params=params)
    x = np.random.default_rng(3).standard_normal((1, 9, *in_shape)).astype(np.float32)
    extra = "transfer: {function: model, activations: [relu]}\n" if host else ""
    for text in (None, DETERMINISTIC.replace("transfer: {function: model, slope: 1.2, scale: 0.9}\n", extra)):
        emu = Emulator(None if text is None else parse_profile(text, "p"))
        emu.program(layer, seed=5)
        if text is not None:
            assert emu.settings.transfer.on_host(act) == host
        direct = emu.run_conv(x, repeats=2, key=(1, 0, 4))
        rows = rows_path(emu, layer, x, 2, (1, 0, 4))
        assert_close_to_rows(direct, rows)
        assert (rows < 0).any()          # the negative side (where the parameters act) is exercised


def one_conv(tmp_path, profile: str):
    in_shape, w_shape, attrs = CONVS["stride_pad"]
    layer = load_model(conv_model(tmp_path, "c", in_shape, w_shape, **attrs)).layers[0]
    emu = Emulator(parse_profile(profile, "p"))
    emu.program(layer, seed=5)
    x = np.random.default_rng(3).uniform(0.5, 1.5, (1, 50, *in_shape)).astype(np.float32)
    return emu, layer, x


def test_direct_conv_noise_is_keyed_and_common_mode_is_per_position(tmp_path):
    base = "version: 1\nprovenance: {source: hand-written}\nnoise: {%s, placement: post}\n"
    emu, layer, x = one_conv(tmp_path, base % "D_AC: 1.0e-2")  # additive, common-mode, after the activation
    clean = Emulator()
    clean.program(layer)
    c = clean.run_conv(x, repeats=1).reshape(1, 50, layer.n_out, -1)
    y = emu.run_conv(x, repeats=4, key=(0, 0, 7))
    assert np.array_equal(y, emu.run_conv(x, repeats=4, key=(0, 0, 7)))          # same key, same numbers
    assert not np.allclose(y, emu.run_conv(x, repeats=4, key=(0, 0, 8)))
    d = y.reshape(4, 50, layer.n_out, -1) - c          # the noise, (repeat, sample, channel, position)
    assert np.abs(d - d[:, :, :1]).max() < 1e-5           # one common shift per (repeat, sample, position) ...
    shared = d[:, :, 0]
    assert np.std(shared - shared[..., :1]) > 0.05           # ... that differs between positions


def test_direct_conv_noise_has_the_rows_variance(tmp_path):
    """D_A + D_M x^2 after the activation: the per-value variance (two samples, n values each)."""
    prof = "version: 1\nprovenance: {source: hand-written}\nnoise: {D_A: 1.0e-3, D_M: 4.0e-3, D_MC: 1.0e-3}\n"
    emu, layer, x = one_conv(tmp_path, prof)
    R = 200
    direct = emu.run_conv(x, repeats=R, key=(0, 0, 1))
    rows = rows_path(emu, layer, x, R, (0, 0, 1))
    assert not np.allclose(direct, rows)                                   # another random stream ...
    v_direct, v_rows = direct.var(axis=0, ddof=1), rows.var(axis=0, ddof=1)
    # ... with the same variance per value: each estimate has relative sd sqrt(2/(R-1)); pooled over values
    rel = np.log(v_direct.mean() / v_rows.mean())
    assert abs(rel) < 4 * np.sqrt(2 * 2 / (R - 1) / v_direct.size) + 0.01
    np.testing.assert_allclose(direct.mean(axis=0), rows.mean(axis=0), atol=4 * np.sqrt(v_rows.max() * 2 / R))


@pytest.mark.parametrize("need", sorted(ROWS_NEEDED))
def test_devices_that_need_rows_get_rows(need, tmp_path):
    in_shape, w_shape, attrs = CONVS["stride_pad"]
    layer = load_model(conv_model(tmp_path, "c", in_shape, w_shape, **attrs)).layers[0]
    emu = Emulator(parse_profile(NOISY.replace("array: {cols: 2}", ROWS_NEEDED[need]), "rows"))
    emu.program(layer, seed=5)
    x = np.random.default_rng(3).standard_normal((1, 4, *in_shape)).astype(np.float32)
    assert emu.run_conv(x, repeats=2, key=(0, 0, 0)) is None
    np.testing.assert_array_equal(on_device(emu, layer, x, 2, key=(0, 0, 0)), rows_path(emu, layer, x, 2, (0, 0, 0)))


def test_noisy_cnn_run_keeps_its_statistics(cnn_onnx, digits):
    """A whole noisy CNN run through the direct path: the same noise variance per layer as the row path."""
    profile = parse_profile(NOISY, "noisy")
    model = load_model(cnn_onnx)
    ds = digits.head(40)

    class RowsOnly(Emulator):          # the emulator as it was: Conv layers always as rows
        run_conv = None

    R = 30
    fast = run_model(model, ds, devices={L.index: Emulator(profile) for L in model.layers}, repeats=R, seed=2)
    rows = run_model(model, ds, devices={L.index: RowsOnly(profile) for L in model.layers}, repeats=R, seed=2)
    for a, b, ca, cb in zip(fast.layers, rows.layers, fast.clean_layers, rows.clean_layers):
        np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-5)           # the reference pass: exact
        va, vb = a.var(axis=0, ddof=1).mean(), b.var(axis=0, ddof=1).mean()
        # per-value variances averaged over >= 400 values of R=30 each: within 10% (sd ~ 1.3%)
        assert abs(np.log(va / vb)) < 0.1, (va, vb)
