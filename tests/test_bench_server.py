"""The simulated controller under abuse, over real TCP sockets: oversized blocks, endless headers,
overlong lines, silent clients, and a seeded fuzzer; the controller keeps answering in bounded memory."""

from __future__ import annotations

import socket
import time

import numpy as np
import psutil
import pytest
import pyvisa

from hwloop.bench import ChipSpec, SimulatedBench, scpi

pytest_plugins = ["tests.bench_fixtures"]
MiB = 1 << 20


def settle(bench: SimulatedBench) -> None:
    """Wait until every connection made so far was accepted (served or refused) and is over."""
    deadline = time.monotonic() + 5
    while bench.connections + bench.refused < _made.get(id(bench), 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bench.wait_disconnected(5), "the previous client is still being served"


_made: dict[int, int] = {}


def connect(bench: SimulatedBench) -> socket.socket:
    settle(bench)
    s = socket.create_connection((bench.host, bench.port), timeout=5)
    _made[id(bench)] = _made.get(id(bench), 0) + 1
    return s


def ask(s: socket.socket, text: str) -> str:
    s.sendall(text.encode() + b"\n")
    out = b""
    while not out.endswith(b"\n"):
        chunk = s.recv(4096)
        assert chunk, f"connection closed while waiting for the answer to {text!r}"
        out += chunk
    return out.decode().strip()


def errors_after(bench: SimulatedBench) -> list[str]:
    """Every queued error, read through pyvisa on a fresh connection (which must be served)."""
    settle(bench)
    _made[id(bench)] = _made.get(id(bench), 0) + 1
    res = pyvisa.ResourceManager("@py").open_resource(bench.resource, read_termination="\n",
                                                      write_termination="\n", timeout=3000)
    try:
        out = []
        while (e := res.query("SYST:ERR?")) != '0,"No error"':
            out.append(e)
        assert res.query("*IDN?").startswith("Lumen")
        return out
    finally:
        res.close()


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_block_over_capacity_is_refused_at_once_and_never_stored(make_bench):
    bench = make_bench()
    before = rss()
    s = connect(bench)
    s.sendall(b"WEIG #9999999999" + b"\x00" * 100_000)   # claims ~1 GB, sends 100 kB, goes quiet
    time.sleep(0.3)
    assert rss() - before < 64 * MiB                       # nothing like the claimed size was allocated
    s.close()
    assert errors_after(bench) == ['-223,"Too much data"']
    # a block that fits the capacity still works after the refusal
    s = connect(bench)
    s.sendall(b"LAY:SHAP 2,3\nWEIG " + scpi.encode_block(np.zeros(6, np.float32), "NORM") + b"\n")
    assert ask(s, "*OPC?") == "1"
    s.close()


def test_header_cache_keeps_only_known_commands(make_bench):
    bench = make_bench()
    s = connect(bench)
    known = len(scpi._FOUND)
    for k in range(300):                                  # distinct unknown headers of 1 KiB each
        tag = "".join(chr(65 + (k // 26 ** i) % 26) for i in range(3))
        assert ask(s, "A" * 1000 + tag + "?") == ""
    assert ask(s, "syst:capacity?") == "256,64,4096,1000"
    assert len(scpi._FOUND) <= known + 1                  # only the known header was remembered
    assert ask(s, "*IDN?").startswith("Lumen")
    s.close()
    errors = errors_after(bench)        # the queue keeps 32: 31 of them, then the overflow
    assert errors == ['-113,"Undefined header"'] * 31 + ['-350,"Queue overflow"']


def test_overlong_line_is_capped_with_an_error_and_not_stored(make_bench):
    bench = make_bench()
    before = rss()
    s = connect(bench)
    chunk = b"A" * MiB
    for _ in range(32):                                   # a 32 MiB line, then a normal query
        s.sendall(chunk)
    assert ask(s, "\n*IDN?").startswith("Lumen")
    assert rss() - before < 16 * MiB
    s.close()
    assert errors_after(bench) == ['-223,"Too much data"']


def test_silent_client_inside_a_message_loses_the_connection(make_bench):
    bench = SimulatedBench(spec=ChipSpec(time_scale=0.0), message_timeout_s=0.3).start()
    try:
        idle = connect(bench)
        time.sleep(0.6)                                   # idle between messages: kept
        assert ask(idle, "*IDN?").startswith("Lumen")
        idle.sendall(b"LAY:SHAP 2,3\nWEIG #224" + b"\x00" * 10)   # then silent inside a block
        assert bench.wait_disconnected(3), "a half-sent block held the controller"
        assert idle.recv(10) == b""                       # the server closed it
        idle.close()
        s = connect(bench)                                # a fresh client is served, the settings kept
        assert ask(s, "LAY:SHAP?") == "2,3"
        s.close()
    finally:
        bench.stop()


def _fuzz_message(rng: np.random.Generator) -> bytes:
    """One message of a random kind: valid, mangled, random bytes, odd blocks, long lines, partial."""
    names = [c.short_header for c in scpi.COMMANDS.values()]
    kind = rng.integers(8)
    if kind == 0:
        return rng.choice(names).encode() + b"\n"
    if kind == 1:                                         # valid header, random parameters
        return rng.choice(names).encode() + b" " + rng.bytes(int(rng.integers(0, 40))).replace(b"\n", b"") + b"\n"
    if kind == 2:
        return rng.bytes(int(rng.integers(1, 2000)))
    if kind == 3:                                         # a block of a random declared and actual size
        declared = int(rng.choice([0, 1, 7, 12, 4096, 10 ** int(rng.integers(1, 10)) - 1]))
        digits = str(declared)
        return (b"WEIG #" + str(len(digits)).encode() + digits.encode()
                + rng.bytes(min(declared, int(rng.integers(0, 5000)))) + b"\n")
    if kind == 4:                                         # malformed block headers
        return b"INP #" + rng.bytes(int(rng.integers(0, 12))) + b"\n"
    if kind == 5:
        return b"X" * int(rng.integers(1, 300_000))
    if kind == 6:
        return b":" * int(rng.integers(1, 100)) + b"?\n"
    return b"SYST:ERR?\r\n"


def test_seeded_fuzz_no_crash_no_hang_bounded_memory(monkeypatch):
    """Bounded: 60 connections of up to 12 random messages each, on loopback, seed 11; after each,
    a fresh connection must be answered within 2 s, and no server thread may die of an exception."""
    import threading

    crashes = []
    monkeypatch.setattr(threading, "excepthook", crashes.append)
    bench = SimulatedBench(spec=ChipSpec(time_scale=0.0), message_timeout_s=0.2).start()
    rng = np.random.default_rng(11)
    before = rss()
    try:
        for _ in range(60):
            s = connect(bench)
            s.settimeout(0.5)
            try:
                for _ in range(int(rng.integers(1, 13))):
                    s.sendall(_fuzz_message(rng))
            except OSError:
                pass                                      # the controller may close on us: that is allowed
            s.close()
            fresh = connect(bench)
            fresh.settimeout(2)
            assert ask(fresh, "*IDN?").startswith("Lumen")    # no hang, no crash
            fresh.close()
        assert errors_after(bench) is not None            # and through pyvisa
        assert rss() - before < 96 * MiB
        assert bench._thread.is_alive() and not crashes, crashes
    finally:
        bench.stop()
