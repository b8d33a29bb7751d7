"""The bench's one retry policy (``DriverSettings.retrying``): back-off, stop, give-up line; the link's use of it."""

import time

import pytest

from hwloop.bench.driver import VisaDevice
from hwloop.bench.settings import DriverSettings
from hwloop.errors import DeviceError


def run_failing(settings: DriverSettings, error: Exception, **policy) -> tuple[list[float], int, BaseException]:
    """Run an attempt that always raises ``error``: (waits before each retry, attempts, what came out)."""
    waits, calls = [], []

    def attempt():
        calls.append(1)
        raise error

    retrying = settings.retrying(lambda e: isinstance(e, ValueError), lambda e: DeviceError(f"gave up: {e}"),
                                 before_sleep=lambda state: waits.append(state.next_action.sleep), **policy)
    with pytest.raises(Exception) as out:
        retrying(attempt)
    return waits, len(calls), out.value


def test_back_off_doubles_to_its_cap_and_gives_up_with_the_callers_line():
    waits, attempts, err = run_failing(DriverSettings(retries=4, backoff_s=0.001, max_backoff_s=0.003),
                                       ValueError("garbled"))
    assert waits == pytest.approx([0.001, 0.002, 0.003, 0.003]) and attempts == 5
    assert isinstance(err, DeviceError) and str(err) == "gave up: garbled"


def test_an_error_not_retried_propagates_as_raised_after_one_attempt():
    waits, attempts, err = run_failing(DriverSettings(retries=4, backoff_s=0.001), KeyError("k"))
    assert (waits, attempts) == ([], 1) and type(err) is KeyError


def test_longer_extends_past_the_retries_and_count_restarts_the_back_off():
    s = DriverSettings(retries=1, backoff_s=0.001, max_backoff_s=1.0)
    waits, attempts, _ = run_failing(s, ValueError("busy"), longer=lambda state, wait_s: state.attempt_number < 4)
    assert attempts == 4 and waits == pytest.approx([0.001, 0.002, 0.004])
    # a count that restarts (the driver's: progress between failures earns fresh retries and back-off)
    waits, attempts, _ = run_failing(DriverSettings(retries=2, backoff_s=0.001), ValueError("x"),
                                     count=lambda state: (state.attempt_number - 1) // 2)
    assert attempts == 5 and waits == pytest.approx([0.001, 0.001, 0.002, 0.002])


def test_a_malformed_resource_gives_up_at_once_and_a_bad_port_number_is_retried():
    """Both are named on one line; only the one pyvisa-py says it could not connect to is worth retrying."""
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"^cannot reach bench controller NOTHING::1: "):
        VisaDevice("NOTHING::1", retries=5, backoff_s=2.0)          # retried, it would wait 2 + 4 + ... s
    assert time.monotonic() - t0 < 1.5
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=r"^cannot reach bench controller TCPIP::127.0.0.1::abc::SOCKET: could not"):
        VisaDevice("TCPIP::127.0.0.1::abc::SOCKET", retries=2, backoff_s=0.2, max_backoff_s=0.2)
    assert time.monotonic() - t0 >= 0.4                              # two waits of 0.2 s: it was retried
