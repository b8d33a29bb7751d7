"""A product's bits do not depend on how many threads torch uses: a Dask worker runs on one thread, a local
run on all, and their stores must be byte-identical (MKL and oneDNN split a few small shapes differently)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwloop.layer import ConvSpec
from hwloop.physics import affine, conv


def on_threads(fn, counts=(1, 2, 4)) -> list[np.ndarray]:
    before = torch.get_num_threads()
    try:
        out = []
        for n in counts:
            torch.set_num_threads(n)
            out.append(np.array(fn()))
        return out
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n_in, n_out", [(64, 32), (784, 256), (32, 16), (256, 10)])
def test_dense_products_have_the_same_bits_on_any_thread_count(n_in, n_out):
    rng = np.random.default_rng(n_in)
    wt = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    for rows in range(1, 41):
        x = rng.standard_normal((rows, n_in)).astype(np.float32)
        first, *rest = on_threads(lambda: affine(x, wt, b))
        assert first.shape == (rows, n_out)
        np.testing.assert_allclose(first, x.astype(np.float64) @ wt + b, rtol=1e-4, atol=1e-4)
        for other in rest:
            assert np.array_equal(first, other), rows


@pytest.mark.parametrize("c_in, side, c_out, k", [(1, 28, 6, 3), (1, 28, 6, 5), (6, 14, 16, 5), (8, 8, 16, 3)])
def test_convolutions_have_the_same_bits_on_any_thread_count(c_in, side, c_out, k):
    rng = np.random.default_rng(c_in * side)
    spec = ConvSpec((k, k), (1, 1), (1, 1, 1, 1), (1, 1), c_in, c_out)
    w = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    for n in (1, 2, 3):
        x = rng.standard_normal((n, c_in, side, side)).astype(np.float32)
        first, *rest = on_threads(lambda: conv(x, w, None, spec))
        assert first.shape[0] == n
        for other in rest:
            assert np.array_equal(first, other), n
