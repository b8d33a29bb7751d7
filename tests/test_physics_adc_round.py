"""The simulated controllers' ADC is physics' quantiser: ``adc_round`` (numpy, in place) equals ``quantize``."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.physics import adc_round, quantize


@pytest.mark.parametrize("bits, lo, hi", [(16, -16.0, 16.0), (14, -8.0, 8.0), (8, 0.0, 1.0)])
def test_adc_round_equals_quantize_ties_and_clipping_included(bits, lo, hi):
    rng = np.random.default_rng(bits)
    x = rng.uniform(lo - 3, hi + 3, 200_000).astype(np.float32)         # more than one 64k piece
    x[:1000] = (np.arange(1000) + 0.5) * ((hi - lo) / (2 ** bits - 1)) + lo   # halfway between levels
    a, b = x.copy(), x.copy()
    assert adc_round(a, bits, lo, hi) is True and quantize(b, bits, lo, hi) > 0
    assert np.array_equal(a, b)
    inside = np.clip(x, lo, hi)
    assert adc_round(inside, bits, lo, hi) is False


def test_controller_dispatches_every_command_through_its_table():
    from hwloop.bench import scpi
    from hwloop.bench.controller import HANDLERS

    assert set(HANDLERS) == set(scpi.COMMANDS)
    assert all(fn.__name__.startswith("do_") for fn in HANDLERS.values())
