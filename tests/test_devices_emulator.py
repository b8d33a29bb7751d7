"""The emulator: exact without a profile; each non-ideality where and when a chip would put it.

Statistical checks use fixed seeds and 5 standard errors of the estimate
(relative error sqrt(2/n) for a Gaussian variance from n draws, 1/sqrt(n) for a
correlation coefficient near 0), so they fail only for a real defect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hwloop.devices import Emulator
from hwloop.layer import AnalogLayer, activate
from hwloop.profiles import load_profile, parse_profile

ROOT = Path(__file__).resolve().parents[1]
HEAD = "version: 1\nprovenance: {source: hand-written}\n"
Z = 5.0


def layer(n_in=20, n_out=12, act="sigmoid", seed=0, index=0, name="fc") -> AnalogLayer:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    b = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
    return AnalogLayer(index, name, "Gemm", w, b, act)


def inputs(b=50, n_in=20, r=1, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (r, b, n_in)).astype(np.float32)


def reference(L: AnalogLayer, x: np.ndarray) -> np.ndarray:
    a = x.reshape(-1, L.n_in) @ L.weight.T.astype(np.float32) + L.bias
    return activate(L.activation, a.astype(np.float32)).reshape(x.shape[0], x.shape[1], -1)


def emu(body: str, L: AnalogLayer, seed: int = 0) -> Emulator:
    e = Emulator(parse_profile(HEAD + body, "test.yaml"))
    e.program(L, seed=seed)
    return e


@pytest.mark.parametrize("act", ["linear", "sigmoid", "tanh", "relu"])
def test_no_profile_and_ideal_profile_are_exact_float32(act):
    """Noise-free float32: every repetition identical, within float32 rounding of a float64 reference
    (a sum of n_in products is off by at most ~n_in * 2^-24 * sum |x w|; activations are 1-Lipschitz)."""
    L, x = layer(act=act), inputs()
    a64 = x[0].astype(np.float64) @ L.weight.T.astype(np.float64) + L.bias
    ref = {"linear": a64, "relu": np.maximum(a64, 0), "tanh": np.tanh(a64), "sigmoid": 1 / (1 + np.exp(-a64))}[act]
    bound = L.n_in * 2.0 ** -24 * (np.abs(x[0]) @ np.abs(L.weight.T) + np.abs(L.bias)) + 2.0 ** -23
    outs = []
    for dev in (Emulator(), Emulator("ideal"), Emulator(load_profile(ROOT / "device_profiles" / "ideal.yaml"))):
        assert dev.ideal
        dev.program(L, seed=3)
        y = dev.run(x, repeats=4, key=(1, 2, 3))
        assert y.shape == (4, 50, 12) and y.dtype == np.float32
        assert np.all(y == y[0]) and np.all(np.abs(y[2] - ref) <= bound)
        outs.append(y)
    assert all(np.array_equal(o, outs[0]) for o in outs)


def test_ideal_flag_sees_per_layer_overrides():
    assert Emulator("ideal").ideal and not Emulator("semenova").ideal
    noisy_one = Emulator(parse_profile(HEAD + "layers:\n  fc2: {noise: {D_A: 1e-3}}\n", "t.yaml"))
    assert not noisy_one.ideal
    L = layer(name="fc1")
    noisy_one.program(L)
    np.testing.assert_array_equal(noisy_one.run(inputs(), repeats=2, key=(0,))[1], reference(L, inputs())[0])


def test_same_seed_and_key_identical_outputs_and_new_program_resets_static():
    L, x = layer(), inputs()
    body = "noise: {D_A: 1e-3, D_MC: 1e-3}\nweights: {program_noise: 0.05, read_noise: 0.01}\n"
    a = emu(body, L, seed=7).run(x, repeats=3, key=(7, 0, 5))
    b = emu(body, L, seed=7).run(x, repeats=3, key=(7, 0, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, emu(body, L, seed=7).run(x, repeats=3, key=(7, 0, 6)))
    # no key: calls are numbered from program(), so a fresh program replays them
    e = emu(body, L, seed=7)
    first, second = e.run(x, repeats=2), e.run(x, repeats=2)
    assert not np.array_equal(first, second)
    e.program(L, seed=7)
    np.testing.assert_array_equal(e.run(x, repeats=2), first)


def test_static_errors_stay_across_batches_until_reprogrammed_dynamic_ones_do_not():
    L, x = layer(), inputs()
    static = "weights: {program_noise: 0.05}\ngain_offset: {gain: 0.05, offset: 0.02}\n"
    e = emu(static, L, seed=1)
    runs = [e.run(x, repeats=2, key=(1, 0, b)) for b in range(3)]
    for y in runs:
        np.testing.assert_array_equal(y, runs[0])       # same in every batch and repetition
    np.testing.assert_array_equal(runs[0][0], runs[0][1])
    assert np.abs(runs[0][0] - reference(L, x)[0]).max() > 1e-3  # and really there
    e.program(L, seed=1)
    np.testing.assert_array_equal(e.run(x, repeats=2, key=(1, 0, 9)), runs[0])   # same seed: same chip
    e.program(L, seed=2)
    assert not np.allclose(e.run(x, repeats=2, key=(1, 0, 0)), runs[0])         # new seed: new draw
    for dynamic in ("weights: {read_noise: 0.02}\n", "noise: {D_A: 1e-4}\n"):
        d = emu(dynamic, L, seed=1)
        y0, y1 = d.run(x, repeats=2, key=(1, 0, 0)), d.run(x, repeats=2, key=(1, 0, 1))
        assert not np.allclose(y0, y1) and not np.allclose(y0[0], y0[1])


def test_layers_and_repetitions_draw_independent_noise():
    """Noise of two layers (different keys) and of two repetitions is uncorrelated: |r| < 5/sqrt(n)."""
    L, x = layer(n_in=20, n_out=50, act="linear"), inputs(b=1000)
    e = emu("noise: {D_A: 1e-2}\n", L)
    clean = reference(L, x)
    n0 = e.run(x, repeats=2, key=(0, 0, 0)) - clean
    n1 = e.run(x, repeats=2, key=(0, 1, 0)) - clean
    n = n0[0].size
    for a, b in [(n0[0], n1[0]), (n0[0], n0[1])]:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < Z / np.sqrt(n)
    for noise in (n0, n1):
        assert abs(noise.var() - 1e-2) < Z * 1e-2 * np.sqrt(2 / noise.size)


def test_pre_activation_noise_is_filtered_by_the_activation():
    L = layer(act="relu")
    L.bias[:] = -100.0  # every pre-activation far below 0: relu output is exactly 0
    x = inputs()
    post = emu("noise: {D_A: 1e-2, placement: post}\n", L).run(x, repeats=3, key=(1,))
    pre = emu("noise: {D_A: 1e-2, placement: pre}\n", L).run(x, repeats=3, key=(1,))
    assert np.all(pre == 0) and post.std() > 0.05
    L2 = layer(act="linear")
    both = emu("noise: {D_A: 1e-2, placement: both}\n", L2).run(inputs(b=2000), repeats=2, key=(1,))
    v = (both - reference(L2, inputs(b=2000))).var()
    assert abs(v - 2e-2) < Z * 2e-2 * np.sqrt(2 / both.size)  # two independent additions


def test_adc_and_dac_quantise_exactly_and_count_clips():
    L, x = layer(act="linear"), inputs()
    e = emu("adc: {bits: 4, range: [-0.5, 0.5]}\ndac: {bits: 3, range: [0.0, 0.8]}\n", L)
    y = e.run(x, repeats=2, key=(0,))
    xq = np.round(np.clip(x, 0, 0.8) / (0.8 / 7)) * (0.8 / 7)
    clean = reference(L, xq.astype(np.float32))
    step = 1.0 / 15
    want = np.clip(np.round((np.clip(clean, -0.5, 0.5) + 0.5) / step) * step - 0.5, -0.5, 0.5)
    np.testing.assert_allclose(y[1], want[0], atol=1e-6)
    assert e.stats["adc_clipped"] == 2 * int(np.sum(np.abs(clean) > 0.5)) > 0
    assert e.stats["dac_clipped"] == int(np.sum(x > 0.8)) > 0
    assert e.stats["adc_values"] == y.size and e.stats["dac_values"] == x.size


def test_transfer_function_and_drift_per_repeat():
    L, x = layer(act="sigmoid"), inputs()
    a = (x.reshape(-1, 20) @ L.weight.T + L.bias).reshape(1, 50, 12)
    y = emu("transfer: {function: sin2, slope: 2.0, scale: 0.5}\n", L).run(x, repeats=1, key=(0,))
    np.testing.assert_allclose(y, 0.5 * np.sin(2 * a) ** 2, rtol=1e-5, atol=1e-6)
    d = emu("drift: {per: repeat, gain: 0.01, offset: 0.002}\n", L).run(x, repeats=4, key=(0,))
    clean = reference(L, x)[0]
    for r in range(4):
        np.testing.assert_allclose(d[r], clean * (1 + 0.01 * r) + 0.002 * r, rtol=1e-5, atol=1e-6)
    b = emu("drift: {per: batch, offset: 0.5}\n", L)
    np.testing.assert_allclose(b.run(x, repeats=1, key=(0, 0, 3))[0], clean + 1.5, rtol=1e-5)


def test_gain_offset_spread_statistics():
    L = layer(n_in=4, n_out=20000, act="linear", seed=2)
    x = inputs(b=2, n_in=4)
    y = emu("gain_offset: {gain: 0.0, offset: 0.03}\n", L, seed=5).run(x, repeats=1, key=(0,))
    off = (y - reference(L, x))[0, 0]
    assert abs(off.var() - 9e-4) < Z * 9e-4 * np.sqrt(2 / off.size)
    np.testing.assert_allclose((y - reference(L, x))[0, 1], off, atol=1e-6)  # per neuron, not per sample


def test_tiles_noise_free_match_untiled_and_noise_is_per_tile():
    L, x = layer(n_in=40, n_out=24, act="tanh"), inputs(b=30, n_in=40)
    # a clip-only ADC far outside the signal forces the physical path without changing values
    tiled = emu("adc: {range: [-100, 100]}\narray: {rows: 16, cols: 8}\n", L).run(x, repeats=2, key=(0,))
    np.testing.assert_allclose(tiled[1], reference(L, x)[0], atol=1e-5)
    # correlated additive noise: shared within a column tile, independent between column tiles;
    # 3 row tiles (40 = 16 + 16 + 8) each add their own draw to the partial sums: variance 3 D
    L2 = layer(n_in=40, n_out=16, act="linear")
    xb = inputs(b=20000, n_in=40)
    e = emu("noise: {D_AC: 1e-2}\narray: {rows: 16, cols: 8}\n", L2).run(xb, repeats=1, key=(0,))
    n = (e - reference(L2, xb))[0]
    c = np.cov(n[:, [0, 1, 8]], rowvar=False)
    tol = Z * 3e-2 * np.sqrt(2 / len(n))
    assert abs(c[0, 0] - 3e-2) < tol and abs(c[0, 1] - 3e-2) < tol  # same tile: fully shared
    assert abs(c[0, 2]) < Z * 3e-2 / np.sqrt(len(n))                # other tile: independent


def test_read_noise_variance_in_the_emulator():
    L = layer(n_in=3, n_out=4, act="linear")
    L.weight[0, 0] = 2.0  # full scale wmax = max |W| = 2
    x = np.tile(np.array([1.0, 2.0, 2.0], np.float32), (1, 50000, 1))  # ||x||^2 = 9
    y = emu("weights: {read_noise: 0.01}\n", L).run(x, repeats=1, key=(0,))
    v = (y - reference(L, x))[0].var(axis=0)
    want = (0.01 * 2.0) ** 2 * 9
    assert np.all(np.abs(v - want) < Z * want * np.sqrt(2 / 50000))


@pytest.mark.parametrize("name", ["ideal", "semenova", "optical", "crossbar"])
def test_shipped_profiles_run_on_a_layer_stack(name):
    """Every shipped profile runs (the demo-model run is in test_check); outputs finite, stats recorded."""
    e = Emulator(name)
    x = inputs(b=64, n_in=300)
    for k, (n_in, n_out) in enumerate([(300, 80), (80, 10)]):
        L = layer(n_in, n_out, act="tanh" if k == 0 else "linear", index=k, name=f"fc{k}")
        e.program(L, seed=k)
        x = e.run(x, repeats=5, key=(0, k, 0))
        assert x.shape == (5, 64, n_out) and np.all(np.isfinite(x))
    assert e.describe()["profile"] == "ideal" or e.describe()["profile"]["sha256"] == load_profile(name).sha256
