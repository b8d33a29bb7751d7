"""The emulator's direct convolution (``Emulator.run_conv``) against the unfolded rows a chip sees.

The runner hands a Conv to an emulator whole when no step needs the rows themselves; the noise
is still drawn in row order, so the numbers must be those of ``run`` on the im2col rows, up to
the float32 rounding of a differently ordered sum.  Devices needing rows get them.
"""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import parse_profile
from hwloop.runner import im2col, on_device, run_model
from tests.test_runner import CONVS, conv_model

NOISY = """
version: 1
provenance: {source: hand-written, notes: tests/test_conv_direct.py}
noise: {D_A: 1.0e-3, D_M: 2.0e-3, D_AC: 1.0e-4, D_MC: 1.0e-4, placement: both, shot: 1.0e-3, dither: 0.01}
adc: {bits: 8, range: [-4, 4]}
gain_offset: {gain: 0.05, offset: 0.02}
transfer: {function: model, slope: 1.2, scale: 0.9}
drift: {per: repeat, gain: 0.01, offset: 0.01}
array: {cols: 2}
"""
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


@pytest.mark.parametrize("case", sorted(CONVS))
@pytest.mark.parametrize("r_in", [1, 3])
def test_direct_conv_draws_the_same_numbers_as_the_rows(case, r_in, tmp_path):
    in_shape, w_shape, attrs = CONVS[case]
    layer = load_model(conv_model(tmp_path, case, in_shape, w_shape, **attrs)).layers[0]
    x = np.random.default_rng(3).standard_normal((r_in, 9, *in_shape)).astype(np.float32)
    for text in (None, NOISY):
        emu = Emulator(None if text is None else parse_profile(text, "noisy"))
        emu.program(layer, seed=5)
        direct = emu.run_conv(x, repeats=3, key=(1, 0, 4))
        assert direct is not None and direct.shape == (3, 9, layer.n_out * int(np.prod(layer.meta["out_spatial"])))
        rows = rows_path(emu, layer, x, 3, (1, 0, 4))
        np.testing.assert_allclose(direct, rows, rtol=1e-5, atol=1e-5)
        if text is not None:        # noise really is there, and differs between keys
            assert np.abs(direct[0] - direct[1]).max() > 1e-3
            assert not np.allclose(direct, emu.run_conv(x, repeats=3, key=(1, 0, 5)))


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
    """A whole noisy CNN run through the direct path equals the row path's run within rounding."""
    profile = parse_profile(NOISY, "noisy")
    model = load_model(cnn_onnx)
    ds = digits.head(40)

    class RowsOnly(Emulator):          # the emulator as it was: Conv layers always as rows
        run_conv = None

    fast = run_model(model, ds, devices={L.index: Emulator(profile) for L in model.layers}, repeats=4, seed=2)
    rows = run_model(model, ds, devices={L.index: RowsOnly(profile) for L in model.layers}, repeats=4, seed=2)
    for a, b in zip(fast.layers, rows.layers):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.output, rows.output, rtol=1e-4, atol=1e-4)
