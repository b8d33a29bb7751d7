"""Fixtures for the simulated bench: real controllers on real TCP sockets, reached through real pyvisa.

Use with ``pytest_plugins = ["tests.bench_fixtures"]``.
"""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.bench import ChipSpec, Faults, SimulatedBench


@pytest.fixture
def make_bench():
    """Factory: ``make_bench(profile=None, faults=None, seed=0, **chip_spec)`` -> a started SimulatedBench.

    Timing is instantaneous (``time_scale=0``) unless a test asks otherwise.
    """
    started: list[SimulatedBench] = []

    def make(profile=None, *, faults: Faults | None = None, seed: int = 0, **spec) -> SimulatedBench:
        bench = SimulatedBench(profile, faults=faults, spec=ChipSpec(**{"time_scale": 0.0, **spec}), seed=seed)
        started.append(bench.start())
        return bench

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def sim_bench(make_bench) -> SimulatedBench:
    """An ideal ANB-64R (256 inputs x 64 outputs) with instantaneous timing."""
    return make_bench()


@pytest.fixture
def visa(sim_bench):
    """A raw pyvisa session with ``sim_bench`` (for protocol-level tests)."""
    import pyvisa

    rm = pyvisa.ResourceManager("@py")
    res = rm.open_resource(sim_bench.resource, read_termination="\n", write_termination="\n", timeout=2000)
    yield res
    res.close()
