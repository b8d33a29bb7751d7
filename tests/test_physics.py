"""Statistics of every noise term and exactness of the converters (hwloop.physics).

Tolerances come from the sample size: with n independent draws, a variance
estimate of a Gaussian has relative standard error sqrt(2/n) (var(s^2) =
2 sigma^4 / n), a covariance estimate between two variables of variances a, b
and covariance c has standard error sqrt((a b + c^2) / n); we allow 5 standard
errors, so a correct implementation fails about once in 3 million checks.
Seeds are fixed, so results are the same every run.
"""

from __future__ import annotations

import numpy as np
import pytest

from hwloop import physics
from hwloop.profiles import Converter, NoiseSettings, WeightSettings

N = 100_000  # draws per estimate
Z = 5.0      # standard errors allowed


def _noise(x: np.ndarray, seed: int = 0, **kw) -> np.ndarray:
    """The noise that apply_noise adds to x (R, B, n), as float64."""
    y = physics.apply_noise(x, NoiseSettings(**kw), physics.generator((seed, 7)))
    return y.astype(np.float64) - x


def _var_tol(var: float, n: int = N, kurtosis: float = 3.0) -> float:
    """5 standard errors of a variance estimate: var(s^2) = (kurtosis - 1) var^2 / n."""
    return Z * var * np.sqrt((kurtosis - 1) / n)


def _cov_tol(a: float, b: float, c: float, n: int = N) -> float:
    return Z * np.sqrt((a * b + c * c) / n)


def _x(n_neurons: int, values=(0.5,)) -> np.ndarray:
    """N draws (rows) of a layer whose neurons sit at the given clean values."""
    v = np.resize(np.asarray(values, np.float32), n_neurons)
    return np.broadcast_to(v, (1, N, n_neurons)).copy()


@pytest.mark.parametrize("term", ["D_A", "D_M", "D_AC", "D_MC"])
def test_each_term_alone_has_its_configured_variance(term):
    D, x0 = 2e-3, 1.7
    e = _noise(_x(2, [x0]), **{term: D})
    scale = x0 ** 2 if term in ("D_M", "D_MC") else 1.0  # multiplicative terms multiply x
    for i in range(2):
        v = e[0, :, i].var()
        assert abs(v - D * scale) < _var_tol(D * scale), (term, v, D * scale)
    assert abs(e.mean()) < Z * np.sqrt(D * scale / N)  # zero mean


@pytest.mark.parametrize("term,correlated", [("D_A", False), ("D_M", False), ("D_AC", True), ("D_MC", True)])
def test_correlated_terms_are_common_mode_uncorrelated_ones_are_not(term, correlated):
    D, x0 = 1e-2, 1.0
    e = _noise(_x(3, [x0]), **{term: D})[0]
    c = np.cov(e, rowvar=False)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        expect = D if correlated else 0.0
        assert abs(c[i, j] - expect) < _cov_tol(D, D, expect), (term, i, j, c[i, j])
    if correlated:  # one draw shared by the layer: identical across neurons
        np.testing.assert_allclose(e[:, 0], e[:, 1], atol=1e-6)


def test_all_terms_together_give_the_predicted_covariance():
    """Full model: cov(y_i, y_j) = diag(D_A + D_M x^2) + D_AC + D_MC x_i x_j (physics.noise_covariance)."""
    noise = dict(D_A=1e-3, D_M=2e-3, D_AC=5e-4, D_MC=1e-3)
    xv = np.array([0.2, -1.0, 2.0], np.float32)
    e = _noise(_x(3, xv), seed=3, **noise)[0]
    got, want = np.cov(e, rowvar=False), physics.noise_covariance(xv, NoiseSettings(**noise))
    for i in range(3):
        for j in range(3):
            tol = _cov_tol(want[i, i], want[j, j], want[i, j]) if i != j else _var_tol(want[i, i])
            assert abs(got[i, j] - want[i, j]) < tol, (i, j, got[i, j], want[i, j])
    np.testing.assert_allclose(np.diag(want), physics.noise_variance(xv, NoiseSettings(**noise)))


def test_multiplicative_variance_scales_with_x_squared():
    xv = [0.5, 1.0, 2.0, -4.0]
    e = _noise(_x(4, xv), seed=5, D_M=1e-3)[0]
    v = e.var(axis=0)
    for x0, vi in zip(xv, v):
        assert abs(vi - 1e-3 * x0 ** 2) < _var_tol(1e-3 * x0 ** 2)
    # ratio of two independent variance estimates: relative error sqrt(2/n + 2/n)
    assert abs(v[2] / v[0] - 16.0) < Z * 16.0 * np.sqrt(4 / N)
    assert np.all(_noise(_x(2, [0.0]), D_M=1.0, D_MC=1.0) == 0)  # nothing to multiply at x = 0


def test_shot_noise_variance_is_linear_in_signal():
    xv = [0.25, 1.0, -4.0]
    e = _noise(_x(3, xv), seed=11, shot=1e-3)[0]
    for x0, vi in zip(xv, e.var(axis=0)):
        assert abs(vi - 1e-3 * abs(x0)) < _var_tol(1e-3 * abs(x0))


def test_dither_is_uniform_of_the_given_width():
    w = 0.1
    e = _noise(_x(2), seed=13, dither=w)[0]
    assert e.min() >= -w / 2 - 1e-6 and e.max() <= w / 2 + 1e-6
    # uniform distribution: kurtosis 9/5
    assert abs(e.var() - w * w / 12) < _var_tol(w * w / 12, n=e.size, kurtosis=1.8)


def test_repetitions_and_samples_draw_independent_noise():
    e = _noise(np.full((2, N, 2), 1.0, np.float32), seed=17, D_A=1e-2, D_MC=1e-2)
    for a, b in [(e[0, :, 0], e[1, :, 0]), (e[0, :-1, 0], e[0, 1:, 0])]:  # repeat 0 vs 1; sample k vs k+1
        c = np.cov(a, b)[0, 1]
        assert abs(c) < _cov_tol(2e-2, 2e-2, 0)


def test_one_clean_copy_broadcast_to_repetitions_draws_each_repetition_anew():
    x = np.full((1, N // 4, 2), 2.0, np.float32)
    y = physics.apply_noise(x, NoiseSettings(D_A=1e-2, D_MC=1e-2), physics.generator((3,)), repeats=4)
    assert y.shape == (4, N // 4, 2)
    e = (y - x).reshape(4, -1)
    want = 1e-2 + 1e-2 * 4.0
    assert abs(e.var() - want) < _var_tol(want, n=e.size)
    c = np.corrcoef(e)  # repetitions pairwise uncorrelated: |r| < 5 / sqrt(n)
    assert np.all(np.abs(c[np.triu_indices(4, 1)]) < Z / np.sqrt(e.shape[1]))


def test_same_key_same_draws_other_key_independent():
    x = _x(4)
    a, b, c = _noise(x, seed=1, D_A=1.0), _noise(x, seed=1, D_A=1.0), _noise(x, seed=2, D_A=1.0)
    assert np.array_equal(a, b)
    r = np.corrcoef(a.ravel(), c.ravel())[0, 1]
    assert abs(r) < Z / np.sqrt(a.size)


def test_chunked_parallel_normals_do_not_depend_on_the_worker_count(monkeypatch):
    import os
    from concurrent.futures import ThreadPoolExecutor

    from hwloop import randomness

    shape = (3, randomness._CHUNK // 2 + 5, 2)  # several chunks, the last one partial
    many = physics.normal(shape, physics.generator((9,))).numpy()
    monkeypatch.setattr(randomness, "_pool", (os.getpid(), ThreadPoolExecutor(max_workers=1)))
    one = physics.normal(shape, physics.generator((9,))).numpy()
    assert np.array_equal(many, one)
    flat = many.ravel().astype(np.float64)
    assert abs(flat.mean()) < Z / np.sqrt(flat.size) and abs(flat.var() - 1) < _var_tol(1.0, n=flat.size)
    # neighbouring chunks are independent streams: no correlation across a chunk boundary
    c = randomness._CHUNK
    assert abs(np.corrcoef(flat[:c], flat[c:2 * c])[0, 1]) < Z / np.sqrt(c)


def test_quantisation_steps_and_clipping_are_exact():
    x = np.array([-0.5, 0.0, 0.07, 0.08, 0.49, 1.0, 1.5, 3 / 7], np.float32)
    n = physics.quantize(x, 3, 0.0, 1.0)  # 8 levels k/7
    assert n == 2
    np.testing.assert_array_equal(x, np.array([0, 0, 0, 1 / 7, 3 / 7, 1, 1, 3 / 7], np.float32))
    rng = np.random.default_rng(0)
    v = rng.uniform(-2, 2, 10_000).astype(np.float32)
    q = v.copy()
    clipped = physics.convert(q, Converter(bits=6, range=(-1.0, 1.0)))
    assert clipped == int(np.sum(np.abs(v) > 1))
    step = 2 / 63
    k = (q + 1) / step
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)           # on the grid
    assert len(np.unique(q)) == 64                                  # every level used, no more
    inside = np.abs(v) <= 1
    assert np.max(np.abs(q[inside] - v[inside])) <= step / 2 + 1e-6  # rounding to nearest
    assert q.min() == -1 and q.max() == 1
    assert physics.quantization_variance(Converter(bits=6, range=(-1.0, 1.0))) == pytest.approx(step ** 2 / 12)
    r = v.copy()
    assert physics.convert(r, Converter(range=(-1.0, 1.0))) == clipped and np.all(r[inside] == v[inside])


def test_weight_programming_grid_clip_and_static_noise():
    w = np.array([[-2.0, -0.3, -0.01, 0.26, 1.0]], np.float32)
    q, clipped = physics.program_weights(w, WeightSettings(bits=2, range=1.0), physics.static_rng(0))
    assert clipped == 1
    np.testing.assert_allclose(q, [[-1, -1 / 3, -1 / 3, 1 / 3, 1]], atol=1e-6)  # 4 levels over [-1, 1]
    big = np.zeros((400, 250), np.float32)
    big[0, 0] = 1.0  # full scale = max |W| = 1
    a, _ = physics.program_weights(big, WeightSettings(program_noise=0.05), physics.static_rng(1))
    b, _ = physics.program_weights(big, WeightSettings(program_noise=0.05), physics.static_rng(1))
    assert np.array_equal(a, b)
    assert abs((a - big).var() - 0.05 ** 2) < _var_tol(0.05 ** 2)


def test_read_noise_has_variance_std2_times_input_norm2():
    x = np.zeros((1, N, 3), np.float32)
    x[0, :, :] = [1.0, 2.0, 2.0]  # ||x||^2 = 9
    a = physics.apply_read_noise(np.zeros((1, N, 2), np.float32), x, 0.01, physics.generator((1,)))
    for i in range(2):
        assert abs(a[0, :, i].var() - 9e-4) < _var_tol(9e-4)
    assert abs(np.cov(a[0].T)[0, 1]) < _cov_tol(9e-4, 9e-4, 0)  # independent across outputs


def test_transfer_functions():
    a = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
    np.testing.assert_allclose(physics.transfer(a, "sin2"), np.sin(a) ** 2, rtol=1e-6)
    np.testing.assert_allclose(physics.transfer(a, "exp_sat", slope=2.0), 1 - np.exp(-2 * np.maximum(a, 0)),
                               rtol=1e-6)
    np.testing.assert_allclose(physics.transfer(a, "model", slope=3.0, scale=0.5, model_activation="sigmoid"),
                               0.5 / (1 + np.exp(-3 * a)), rtol=1e-6)
    np.testing.assert_array_equal(physics.transfer(a.copy(), "model", model_activation="relu"), np.maximum(a, 0))


def test_gain_offset_draw_statistics():
    g, o = physics.gain_offset_draw(N, 0.02, 0.01, physics.static_rng(4))
    assert abs(g.var() - 4e-4) < _var_tol(4e-4) and abs(o.var() - 1e-4) < _var_tol(1e-4)
    assert abs(g.mean() - 1) < Z * 0.02 / np.sqrt(N)
