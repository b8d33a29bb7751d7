"""VisaDevice against the simulated bench, through real pyvisa over TCP: same numbers as the emulator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hwloop.bench import VisaDevice
from hwloop.devices import Emulator
from hwloop.errors import DeviceError, HwloopError
from hwloop.layer import AnalogLayer
from hwloop.profiles import load_profile

pytest_plugins = ["tests.bench_fixtures"]

STEP = 32 / 65535          # the default ANB-64R ADC: 16 bits over [-16, 16]


def layer(n_out, n_in, act="sigmoid", seed=0, scale=None, bias=0.1, index=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, scale or 1 / np.sqrt(n_in), (n_out, n_in)).astype(np.float32)
    return AnalogLayer(index, f"fc{index}", "Gemm", w, rng.normal(0, bias, n_out).astype(np.float32), act)


def ideal(L, x, repeats):
    e = Emulator()
    e.program(L)
    return np.asarray(e.run(x, repeats=repeats))


def inputs(b, n, seed=1, lo=-1.0, hi=1.0, r=1):
    return np.random.default_rng(seed).uniform(lo, hi, (r, b, n)).astype(np.float32)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "linear"])
def test_noise_free_chip_equals_ideal_emulator(sim_bench, act):
    L = layer(48, 200, act)
    with VisaDevice(sim_bench.resource, timeout_ms=2000) as dev:
        dev.program(L)
        x = inputs(300, 200)
        y = dev.run(x, repeats=3)                        # first layer: R_in = 1, SAMP:COUN 3
        assert y.shape == (3, 300, 48) and y.dtype == np.float32
        np.testing.assert_allclose(y, ideal(L, x, 3), rtol=0, atol=STEP / 2 * 1.01)
        x3 = inputs(100, 200, seed=2, r=3)               # later layer: R*B rows, SAMP:COUN 1
        np.testing.assert_allclose(dev.run(x3, repeats=3), ideal(L, x3, 3), rtol=0, atol=STEP / 2 * 1.01)
        assert dev.describe()["tiling"]["tiles"] == 1


def test_plain_pyvisa_path_gives_the_same_numbers(make_bench):
    """raw_socket=False: only pyvisa's read/write calls, the path of any non-socket VISA resource;
    several measurements, both byte orders, blocks holding 0x0A bytes, and a dropped connection."""
    from hwloop.bench import Faults

    bench = make_bench(max_batch=7, faults=Faults(drop_after=60))
    L = layer(6, 10, "tanh")
    for order in ("SWAP", "NORM"):
        with VisaDevice(bench.resource, raw_socket=False, byte_order=order, backoff_s=0.02, timeout_ms=500) as dev:
            dev.program(L)
            x = inputs(20, 10, seed=3)
            np.testing.assert_allclose(dev.run(x, repeats=5), ideal(L, x, 5), atol=STEP / 2 * 1.01)
            assert dev.stats["written_behind"] == 0 and dev.stats["measurements"] == 3
            # a result whose float32 bytes hold 0x0A: the block's byte count, not LF, must delimit it
            codes = np.arange(32768, 65535)
            grid = (np.float32(-16) + codes * np.float32(STEP)).astype(np.float32)
            value = next(v for v in grid if b"\n" in v.tobytes() and abs(v) < 0.9)
            dev.program(AnalogLayer(1, "bias", "Gemm", np.zeros((6, 10), np.float32), np.full(6, value, np.float32),
                                    "linear"))
            np.testing.assert_allclose(dev.run(np.zeros((1, 3, 10), np.float32), repeats=2), value,
                                       atol=STEP / 2 * 1.01)
    assert bench.clock.fired["drop"] == 1


def test_round_trips_per_batch_do_not_grow_with_batch(sim_bench):
    L = layer(16, 32)
    with VisaDevice(sim_bench.resource) as dev:
        dev.program(L)
        counts = []
        for b in (10, 2000):
            before = sim_bench.clock.count
            dev.run(inputs(b, 32), repeats=20)
            counts.append(sim_bench.clock.count - before)
    assert counts[0] == counts[1] == 8      # INP SAMP:COUN INIT *OPC? FETC:SHAP? FETC? STAT:QUES? SYST:ERR?


def test_tiled_784_input_layer_equals_untiled(make_bench):
    """784x100 on a 256x64 array (4x2 tiles, LINear, host bias + activation) = one 1024x128 array."""
    L = layer(100, 784, "sigmoid", seed=3)
    x = inputs(200, 784, lo=0, hi=1)
    small, big = make_bench(), make_bench(max_inputs=1024, max_outputs=128)
    with VisaDevice(small.resource) as tiled, VisaDevice(big.resource) as whole:
        tiled.program(L)
        whole.program(L)
        d = tiled.describe()["tiling"]
        assert d == {"tiles": 8, "grid": [2, 4], "host_bias_and_activation": True, "chip_activation": "LIN"}
        assert whole.describe()["tiling"]["tiles"] == 1
        yt, yw = tiled.run(x, repeats=2), whole.run(x, repeats=2)
    # tiled: 4 partial sums each within STEP/2, before a sigmoid (slope <= 1/4); untiled: STEP/2 after it
    np.testing.assert_allclose(yt, ideal(L, x, 2), rtol=0, atol=4 * STEP / 2 / 4 * 1.01)
    np.testing.assert_allclose(yt, yw, rtol=0, atol=(4 * STEP / 2 / 4 + STEP / 2) * 1.01)


def test_noisy_chip_statistics_match_emulator_under_same_profile(make_bench):
    """Semenova noise (all four terms): chip and emulator agree in mean and variance per neuron.

    R = 400 repeats of 40 samples x 24 neurons.  A variance from R draws has relative standard error
    sqrt(2/(R-1)) = 7%; averaged over the 40 samples (independent; neurons share the correlated
    terms, so they are not counted) it is 1.1%: we allow 5% (4.5 sigma).  Means: per neuron
    and sample the difference of two means has std sqrt(2 var / R); we bound its RMS by 1.2x.
    """
    profile = load_profile("semenova")
    L = layer(24, 64, "sigmoid", seed=4)
    x = inputs(40, 64, seed=5)
    R = 400
    bench = make_bench(profile, seed=7)
    with VisaDevice(bench.resource) as dev:
        dev.program(L)
        chip = dev.run(x, repeats=R).astype(np.float64)
    emu = Emulator(profile)
    emu.program(L, seed=11)
    sim = np.asarray(emu.run(x, repeats=R, key=(1, 2, 3)), np.float64)
    v_chip, v_emu = chip.var(axis=0, ddof=1), sim.var(axis=0, ddof=1)
    assert abs(v_chip.mean() / v_emu.mean() - 1) < 0.05
    se = np.sqrt(2 * v_emu / R)
    assert np.sqrt(np.mean(((chip.mean(0) - sim.mean(0)) / se) ** 2)) < 1.2
    assert v_chip.mean() > 1e-3          # it is noisy at all (D_A alone is 1e-3)
    # common mode (the correlated terms): variance of the layer mean over repeats, same 5% bound
    cm_chip, cm_emu = chip.mean(axis=2).var(axis=0, ddof=1), sim.mean(axis=2).var(axis=0, ddof=1)
    assert abs(cm_chip.mean() / cm_emu.mean() - 1) < 0.05
    assert cm_chip.mean() > 1e-4         # D_AC alone is 1e-4: the common mode is really there


@pytest.mark.parametrize("order", ["SWAP", "NORM"])
def test_driver_byte_orders(sim_bench, order):
    L = layer(8, 16, "tanh")
    with VisaDevice(sim_bench.resource, byte_order=order) as dev:
        dev.program(L)
        x = inputs(50, 16)
        np.testing.assert_allclose(dev.run(x, repeats=2), ideal(L, x, 2), atol=STEP / 2 * 1.01)
        assert dev.describe()["byte_order"] == order


def test_out_of_range_refused_or_scaled_exactly(sim_bench):
    big_w = layer(8, 16, "relu", scale=3.0)               # weights beyond WEIG:RANG? 1.0
    with VisaDevice(sim_bench.resource, strict_ranges=True) as dev:
        with pytest.raises(HwloopError, match=r"weights reach .*WEIG:RANG\?.*strict_ranges"):
            dev.program(big_w)
        dev.program(layer(8, 16, "relu"))
        with pytest.raises(HwloopError, match=r"inputs span .*INP:RANG\?"):
            dev.run(inputs(5, 16, lo=-3, hi=3), repeats=1)
    with VisaDevice(sim_bench.resource) as dev:            # the default: exact power-of-two scaling
        for act in ("relu", "sigmoid"):
            L = layer(8, 16, act, scale=3.0)
            dev.program(L)
            s_w = dev.describe()["scaling"]["weights"]
            assert s_w in (8.0, 16.0)                     # a power of two bringing max|W| under 1
            assert dev.describe()["tiling"]["host_bias_and_activation"] == (act == "sigmoid")
            assert dev.describe()["placement"]["activation"] == ("host" if act == "sigmoid" else "chip")
            x = inputs(30, 16, lo=-3, hi=3)               # scaled by 4 per measurement
            err = s_w * 4 * STEP / 2 * 1.01
            np.testing.assert_allclose(dev.run(x, repeats=2), ideal(L, x, 2), rtol=0, atol=err)


def test_sibling_devices_share_one_chip(sim_bench):
    a, b = layer(20, 30, "tanh", seed=1), layer(10, 20, "relu", seed=2, index=1)
    with VisaDevice(sim_bench.resource) as d0:
        d1 = d0.sibling()
        d0.program(a)
        d1.program(b)
        x = inputs(40, 30)
        for _ in range(2):                                  # the chip is reprogrammed at each switch
            h = d0.run(x, repeats=1)
            np.testing.assert_allclose(d1.run(h, repeats=1), ideal(b, ideal(a, x, 1), 1), atol=3 * STEP)
        d1.close()
        assert sim_bench.connections == 1


def test_clipping_is_never_silent(sim_bench):
    L = AnalogLayer(0, "sum", "Gemm", np.ones((2, 64), np.float32), np.zeros(2, np.float32), "linear")
    with VisaDevice(sim_bench.resource, retries=0) as dev:
        dev.program(L)
        with pytest.raises(DeviceError, match=r"clipped .*STAT:QUES:COND"):
            dev.run(np.ones((1, 3, 64), np.float32), repeats=1)
    with VisaDevice(sim_bench.resource, on_clip="warn") as dev:
        dev.program(L)
        with pytest.warns(UserWarning, match="clipped"):
            y = dev.run(np.ones((1, 3, 64), np.float32), repeats=1)
        assert np.all(y == 16.0) and dev.describe()["stats"]["clipped"] == 1


def test_failure_mid_stream_leaves_no_reply_to_be_misread(make_bench):
    """The 3rd of 5 streamed measurements clips (DeviceError, not retried) while the 4th is already
    written: its replies must not be taken for anyone's; the device measures correctly afterwards."""
    bench = make_bench(max_batch=4)
    L = AnalogLayer(0, "sum", "Gemm", np.ones((2, 64), np.float32), np.zeros(2, np.float32), "linear")
    x = np.zeros((1, 20, 64), np.float32)
    x[0, 9] = 1.0                                          # row 9 (3rd measurement) sums to 64 > 16
    with VisaDevice(bench.resource) as dev:
        dev.program(L)
        with pytest.raises(DeviceError, match="clipped"):
            dev.run(x, repeats=1)
        assert dev.stats["measurements"] == 3 and dev.stats["written_behind"] == 3
        y = dev.run(np.full((1, 20, 64), 0.1, np.float32), repeats=2)
    np.testing.assert_allclose(y, 6.4, atol=STEP / 2 * 1.01)


def test_describe_is_provenance(sim_bench):
    with VisaDevice(sim_bench.resource) as dev:
        dev.program(layer(8, 16))
        d = dev.describe()
    assert d["idn"].startswith("Lumen Analog Instruments,ANB-64R") and d["serial"] == "SN0042"
    assert 20 < d["temperature_c"] < 30
    assert d["capacity"] == {"max_inputs": 256, "max_outputs": 64, "max_batch": 4096, "max_repeats": 1000}
    assert d["ranges"]["outputs"] == [-16.0, 16.0] and d["byte_order"] == "SWAP"
    assert "tiling" in d and "scaling" in d
    import json
    json.dumps(d)


def test_unreachable_resource_is_named():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                            # nothing listens there now
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=rf"cannot reach bench controller TCPIP::127.0.0.1::{port}::SOCKET"):
        VisaDevice(f"TCPIP::127.0.0.1::{port}::SOCKET", retries=1, backoff_s=0.01, timeout_ms=300,
                   connect_wait_s=60.0)
    assert time.monotonic() - t0 < 30.0      # refused: nothing listens, so no waiting for a busy controller


def test_batches_and_repeats_split_at_the_chips_limits(make_bench):
    bench = make_bench(max_batch=7, max_repeats=4)
    L = layer(6, 10, "tanh")
    with VisaDevice(bench.resource) as dev:
        dev.program(L)
        x = inputs(20, 10)
        before = bench.clock.count
        y = dev.run(x, repeats=10)                         # 3 row chunks x 3 repeat chunks (4, 4, 2)
        assert dev.stats["measurements"] == 9 and bench.clock.count - before == 9 * 8
        assert dev.stats["written_behind"] == 8            # each one's commands sent while the last was read
        np.testing.assert_allclose(y, ideal(L, x, 10), atol=STEP / 2 * 1.01)
        x3 = inputs(5, 10, r=10)                           # 50 rows with SAMP:COUN 1 -> 8 chunks of <= 7
        np.testing.assert_allclose(dev.run(x3, repeats=10), ideal(L, x3, 10), atol=STEP / 2 * 1.01)


def test_chip_reports_the_profiles_adc_and_array(make_bench):
    bench = make_bench(load_profile("crossbar"))
    with VisaDevice(bench.resource) as dev:
        assert dev.limits["output_bits"] == 8 and dev.limits["output_range"] == (-8.0, 8.0)
        assert (dev.limits["max_inputs"], dev.limits["max_outputs"]) == (256, 64)


def test_opening_waits_for_a_controller_busy_with_its_previous_client(sim_bench):
    """The controller serves one client and closes any other at once.  Opening a device while the last
    user is still connected (a validation run right after another, on a loaded machine) waits up to
    ``connect_wait_s`` for it instead of failing once the measurement retries (~1.6 s here) are spent."""
    import threading
    import time

    first = VisaDevice(sim_bench.resource, timeout_ms=2000)
    threading.Timer(2.5, first.close).start()             # the previous client leaves after 2.5 s
    t0 = time.monotonic()
    with VisaDevice(sim_bench.resource, timeout_ms=2000) as second:
        assert second.describe()["idn"]
    assert time.monotonic() - t0 >= 2.0 and sim_bench.refused >= 1
    busy = VisaDevice(sim_bench.resource, timeout_ms=2000)
    try:
        with pytest.raises(DeviceError, match="cannot reach bench controller"):
            VisaDevice(sim_bench.resource, timeout_ms=2000, connect_wait_s=0.5)   # gives up after its wait
    finally:
        busy.close()


def test_closing_the_opener_frees_the_controller_even_with_siblings_left_open(sim_bench):
    """Devices made with ``sibling()`` share the opener's connection; closing the opener ends the session, so
    a sibling nobody closed (still referenced, e.g. by a result) does not keep the one-client controller busy."""
    first = VisaDevice(sim_bench.resource, timeout_ms=2000)
    kept = [first.sibling(), first.sibling()]             # never closed
    first.close()
    with VisaDevice(sim_bench.resource, timeout_ms=2000, connect_wait_s=0.0) as again:   # no waiting allowed
        assert again.describe()["idn"]
    assert len(kept) == 2
