"""A polled ASCII dialect streams (the next measurement written while this one is read) and measures exactly
what it measures step by step: same numbers, same messages (real pyvisa over real TCP)."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.bench.described import DescribedDevice
from hwloop.bench.described_server import DescribedController
from hwloop.layer import AnalogLayer


class _Stepwise(DescribedDevice):
    """The same driver with streaming turned off: each measurement step by step."""

    streams = property(lambda self: False)


@pytest.mark.filterwarnings("ignore:.*tanh runs on the host:UserWarning")
def test_streamed_polled_measurements_equal_stepwise_ones():
    rng = np.random.default_rng(0)
    L = AnalogLayer(0, "fc", "Gemm", rng.uniform(-1, 1, (12, 40)).astype(np.float32),
                    rng.uniform(-0.5, 0.5, 12).astype(np.float32), "tanh")     # 40 > 32 inputs: two tiles
    x = rng.uniform(-0.4, 0.4, (1, 150, 40)).astype(np.float32)                # 150 > 64: three row blocks
    ctls = [DescribedController("acme-nc", "semenova", seed=3).start() for _ in range(2)]
    try:
        with DescribedDevice("acme-nc", ctls[0].resource) as fast, _Stepwise("acme-nc", ctls[1].resource) as slow:
            ys = []
            for dev in (fast, slow):
                dev.program(L)
                ys.append(dev.run(x, repeats=3))
            assert fast.streams and fast.stats["written_behind"] == 4      # 2 tiles x (3 blocks - 1)
            assert slow.stats["written_behind"] == 0
            assert fast.stats["measurements"] == slow.stats["measurements"] == 6
    finally:
        for c in ctls:
            c.stop()
    assert ys[0].shape == (3, 150, 12) and ys[0].std(axis=0).max() > 0         # the chip's noise is there
    assert np.array_equal(ys[0], ys[1])                                         # byte-identical
    assert ctls[0].count == ctls[1].count                                       # the same messages
