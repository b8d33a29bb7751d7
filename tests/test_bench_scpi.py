"""The simulated controller follows ../shared/bench/SCPI.md, checked through real pyvisa over TCP."""

from __future__ import annotations

import socket
import struct
import time
import zlib

import numpy as np
import pytest

from hwloop.bench import scpi

pytest_plugins = ["tests.bench_fixtures"]


def raw_block(res, values=None, order="SWAP", payload=None) -> bytes:
    return scpi.block_header(len(payload)) + payload if payload is not None else scpi.encode_block(values, order)


def read_block(res) -> bytes:
    """One definite-length block reply: header, the exact byte count (it may contain 0x0A), LF."""
    head = res.read_bytes(2)
    assert head[:1] == b"#", head
    count = int(res.read_bytes(int(head[1:2])))
    res.read_termination = None
    try:
        data = res.read_bytes(count) if count else b""
        assert res.read_bytes(1) == b"\n"
    finally:
        res.read_termination = "\n"
    return data


def send(res, text: str, block: bytes | None = None) -> None:
    res.write_raw(text.encode() + (b" " + block if block is not None else b"") + b"\n")


def errors(res) -> list[int]:
    out = []
    while True:
        code = int(res.query("SYST:ERR?").split(",")[0])
        if code == 0:
            return out
        out.append(code)


def program(res, w: np.ndarray, order: str = "SWAP") -> None:
    send(res, f"FORM:BORD {order}")
    send(res, f"LAY:SHAP {w.shape[0]},{w.shape[1]}")
    send(res, "WEIG", raw_block(res, w, order))
    assert res.query("*OPC?") == "1"


def test_identify_capacity_and_ranges(visa):
    assert visa.query("*IDN?") == "Lumen Analog Instruments,ANB-64R,SN0042,2.3.1"
    assert visa.query("SYST:CAP?") == "256,64,4096,1000"
    assert float(visa.query("WEIG:RANG?")) == 1.0
    assert visa.query("INP:RANG?") == "-1,1"
    assert visa.query("ACT:CAT?") == "SIGM,TANH,RELU,LIN"
    assert int(visa.query("OUTP:BITS?")) == 16
    assert 20 < float(visa.query("SYST:TEMP?")) < 30
    assert errors(visa) == []


def test_manual_example_checksum_and_header_forms(visa):
    # The manual's session: 64x256 weights -> WEIG:CHEC? 65a61463 (numpy's default_rng(0) uniform draws).
    w = np.random.default_rng(0).uniform(-1, 1, (64, 256)).astype(np.float32)
    program(visa, w)
    assert visa.query("WEIG:CHEC?") == "65a61463" == f"{zlib.crc32(w.astype('<f4').tobytes()):08x}"
    # short, long, lower case, optional node, leading colon, trailing CR: all the same command
    for header in ("WEIG", "weights:data", "WEIGhts", ":weig:data"):
        send(visa, "LAY:SHAP 64,256")
        assert visa.query("WEIG:CHEC?") == "00000000"
        send(visa, header, raw_block(visa, w))
        assert visa.query("weights:checksum?\r") == "65a61463", header
    assert visa.query("lay:shape?") == "64,256"
    assert visa.query("syst:error:next?") == '0,"No error"'


@pytest.mark.parametrize("order", ["NORM", "SWAP"])
def test_both_byte_orders_and_blocks_containing_lf(visa, order):
    assert visa.query("FORM:BORD?") == "NORM"          # power-on default: big-endian
    # every weight's bytes contain 0x0A in either byte order
    lf = [struct.unpack("<f", bytes(b))[0] for b in ([0x0A, 0x0A, 0x20, 0x3E], [0x3E, 0x0A, 0x0A, 0x0A],
                                                       [0x0A, 0x00, 0x0A, 0xBE], [0x0A, 0x0A, 0x0A, 0x3D])]
    w = np.array(lf * 8, np.float32).reshape(4, 8)
    program(visa, w, order)
    assert visa.query("FORM:BORD?") == order
    send(visa, "BIAS", raw_block(visa, w[:, 0] / 2, order))
    assert visa.query("WEIG:CHEC?") == scpi.weights_checksum(w)   # checksum is of the values, not the order
    send(visa, "WEIG?")
    data = read_block(visa)
    assert data.count(b"\n") >= 32
    np.testing.assert_array_equal(np.frombuffer(data, scpi.block_dtype(order)).reshape(4, 8), w)
    send(visa, "BIAS?")
    np.testing.assert_array_equal(np.frombuffer(read_block(visa), scpi.block_dtype(order)), w[:, 0] / 2)
    x = np.array([[0.5, -0.25, 0.125, 1.0, -1.0, 0.0, 0.75, 0.0]], np.float32)
    send(visa, "INP", raw_block(visa, x, order))
    send(visa, "INIT")
    visa.query("*OPC?")
    assert visa.query("FETC:SHAP?") == "1,1,4"
    send(visa, "FETC?")
    y = np.frombuffer(read_block(visa), scpi.block_dtype(order))
    step = 32 / 65535
    np.testing.assert_allclose(y, (x @ w.T)[0] + w[:, 0] / 2, atol=step / 2 + 1e-6)
    assert errors(visa) == []


def test_error_table_every_row(visa):
    """Each row of section 7, provoked; a failing query answers an empty line at once."""
    w = np.zeros((2, 3), np.float32)
    cases = [
        ("LAY:SHAP two,3", None, -102), ("LAY$SHAP 2,3", None, -102), ("*CLS extra", None, -102),
        ("LAY:SHAP 2", None, -109), ("SAMP:COUN", None, -109), ("WEIG", None, -109),
        ("FOO:BAR 1", None, -113), ("LAY:SHAPE:NOW 1,1", None, -113),
        ("WEIG", raw_block(visa, payload=b"\x00" * 7), -161), ("WEIG", raw_block(visa, payload=b"\x00" * 20), -161),
        ("INP", raw_block(visa, payload=b"\x00" * 8), -161),
        ("INIT", None, -221),
        ("LAY:SHAP 65,256", None, -222), ("LAY:SHAP 64,257", None, -222), ("LAY:SHAP 0,1", None, -222),
        ("SAMP:COUN 1001", None, -222), ("ACT SOFTMAX", None, -222),
        ("WEIG", raw_block(visa, np.full((2, 3), 1.5, np.float32)), -222),
        ("BIAS", raw_block(visa, np.full(2, 5.0, np.float32)), -222),
        ("INP", raw_block(visa, np.full((1, 3), 1.01, np.float32)), -222),
        ("WEIG", raw_block(visa, np.zeros((3, 3), np.float32)), -223),
        ("INP", raw_block(visa, np.zeros((4097, 3), np.float32)), -223),
    ]
    send(visa, "FORM:BORD SWAP")
    send(visa, "LAY:SHAP 2,3")
    for text, block, code in cases:
        send(visa, text, block)
        assert errors(visa) == [code], text
    # "#0" (indefinite length) is not a definite-length block
    visa.write_raw(b"WEIG #0" + b"\x00" * 24 + b"\n")
    assert errors(visa) == [-161]
    # a command that fails changes nothing
    assert visa.query("LAY:SHAP?") == "2,3" and visa.query("WEIG:CHEC?") == "00000000"
    # failing queries: -113 and -230, each answered by an empty line, quickly
    for query, code in (("FOO?", -113), ("FETC?", -230), ("FETC:SHAP?", -230)):
        t = time.perf_counter()
        assert visa.query(query) == ""
        assert time.perf_counter() - t < 1.0
        assert errors(visa) == [code]
    # -350: the 33rd error overflows; the newest entry becomes -350; the queue holds 32
    for _ in range(40):
        send(visa, "FOO")
    assert int(visa.query("SYST:ERR:COUN?")) == 32
    assert int(visa.query("*STB?")) & 4
    got = errors(visa)
    assert got == [-113] * 31 + [-350]
    assert int(visa.query("*STB?")) & 4 == 0
    send(visa, "FOO")
    assert int(visa.query("*ESR?")) & 32          # command error bit; reading clears it
    assert int(visa.query("*ESR?")) == 0
    send(visa, "*CLS")
    assert errors(visa) == []


def test_rst_measurement_lifetime_and_status(make_bench):
    import pyvisa

    bench = make_bench(time_scale=0.25)         # 20 us/eval * 0.25 -> a 200k-evaluation measurement takes 1 s
    res = pyvisa.ResourceManager("@py").open_resource(bench.resource, read_termination="\n",
                                                      write_termination="\n", timeout=3000)
    w = np.eye(4, 8, dtype=np.float32) * 0.5
    program(res, w)
    send(res, "ACT RELU")
    assert res.query("ACT?") == "RELU"
    x = np.random.default_rng(0).uniform(-1, 1, (2000, 8)).astype(np.float32)
    send(res, "INP", raw_block(res, x))
    send(res, "SAMP:COUN 100")
    send(res, "INIT")
    assert int(res.query("STAT:OPER:COND?")) & 16      # measuring
    assert res.query("*OPC?") == "1"
    assert int(res.query("STAT:OPER:COND?")) == 0
    assert res.query("FETC:SHAP?") == "100,2000,4"
    send(res, "FETC?")
    y = np.frombuffer(read_block(res), "<f4").reshape(100, 2000, 4)
    np.testing.assert_allclose(y[3], np.maximum(x @ w.T, 0), atol=32 / 65535)
    send(res, "SAMP:COUN 2")                             # does not touch the last measurement
    assert res.query("FETC:SHAP?") == "100,2000,4"
    # the data survives a disconnect
    res.close()
    assert bench.wait_disconnected()
    res = pyvisa.ResourceManager("@py").open_resource(bench.resource, read_termination="\n",
                                                      write_termination="\n", timeout=3000)
    assert res.query("FETC:SHAP?") == "100,2000,4"
    assert res.query("FORM:BORD?") == "SWAP"
    # ... and dies with the next INP / INIT, or with ABORt of a running measurement
    send(res, "SAMP:COUN 100")
    send(res, "INIT")
    send(res, "ABOR")
    assert res.query("FETC:SHAP?") == "" and errors(res) == [-230]
    send(res, "INP", raw_block(res, x[:5]))
    assert res.query("FETC?") == "" and errors(res) == [-230]
    for cmd in ("LAY:SHAP 4,8", "BIAS", "ACT LIN", "WEIG"):
        program(res, w)
        send(res, "INP", raw_block(res, x[:5]))
        send(res, "INIT")
        assert res.query("FETC:SHAP?") == "100,5,4"
        blk = raw_block(res, w if cmd == "WEIG" else np.zeros(4, np.float32)) if cmd in ("BIAS", "WEIG") else None
        send(res, cmd, blk)
        assert res.query("FETC:SHAP?") == "", cmd
        assert errors(res) == [-230]
    # *RST: defaults back, error queue untouched
    send(res, "FOO")
    send(res, "*RST")
    assert res.query("LAY:SHAP?") == "1,1" and res.query("ACT?") == "LIN" and res.query("SAMP:COUN?") == "1"
    assert res.query("FORM:BORD?") == "NORM" and res.query("WEIG:CHEC?") == "00000000"
    assert errors(res) == [-113]
    res.close()


def test_one_connection_at_a_time(visa, sim_bench):
    assert visa.query("*IDN?").startswith("Lumen")
    with socket.create_connection((sim_bench.host, sim_bench.port), timeout=2) as s:
        s.sendall(b"*IDN?\n")
        assert s.recv(100) == b""          # accepted and closed at once
    assert visa.query("*OPC?") == "1"      # the first connection is unaffected
    assert sim_bench.refused == 1


def test_questionable_clip_and_temperature(make_bench):
    import pyvisa

    for temperature, want in ((25.0, 0), (80.0, 2)):
        bench = make_bench(temperature=temperature)
        res = pyvisa.ResourceManager("@py").open_resource(bench.resource, read_termination="\n",
                                                          write_termination="\n", timeout=2000)
        program(res, np.ones((1, 32), np.float32))
        send(res, "INP", raw_block(res, np.full((1, 32), 0.25, np.float32)))   # sum 8: inside +-16
        send(res, "INIT")
        assert int(res.query("STAT:QUES:COND?")) == want
        send(res, "INP", raw_block(res, np.full((1, 32), 1.0, np.float32)))    # sum 32: clipped at 16
        send(res, "INIT")
        assert int(res.query("STAT:QUES:COND?")) == want | 1
        send(res, "FETC?")
        assert np.frombuffer(read_block(res), "<f4")[0] == 16.0
        res.close()


def test_temperature_drifts_slowly_and_gain_follows(make_bench):
    import pyvisa

    bench = make_bench(temperature_swing=5.0, temperature_period_s=3.0, gain_tc=0.01)
    res = pyvisa.ResourceManager("@py").open_resource(bench.resource, read_termination="\n",
                                                      write_termination="\n", timeout=2000)
    program(res, np.full((1, 4), 0.5, np.float32))
    seen = []
    for _ in range(6):
        before = float(res.query("SYST:TEMP?"))
        send(res, "INP", raw_block(res, np.full((1, 4), 1.0, np.float32)))
        send(res, "INIT")
        after = float(res.query("SYST:TEMP?"))
        send(res, "FETC?")
        y = float(np.frombuffer(read_block(res), "<f4")[0])
        seen.append((before, after, y))
        time.sleep(0.3)
    temps = np.array([(b + a) / 2 for b, a, _ in seen])
    assert temps.max() - temps.min() > 2.0 and np.all(np.abs(np.diff(temps)) < 6.0)
    # output 2.0 * (1 + 0.01 (T - 25)): the gain follows the temperature at the measurement, which lies
    # between the readings before and after it; add 0.05 C for the jitter (std 0.01) and the ADC step (0.012 C)
    t_chip = np.array([y / 2.0 - 1 for _, _, y in seen]) / 0.01 + 25
    for (b, a, _), t in zip(seen, t_chip):
        assert min(b, a) - 0.05 <= t <= max(b, a) + 0.05
    res.close()


def test_cli_serve_with_faults(tmp_path):
    import re
    import subprocess
    import sys

    import pyvisa

    proc = subprocess.Popen([sys.executable, "-m", "hwloop", "bench", "serve", "--port", "0", "--profile", "ideal",
                             "--drop-after", "3", "--seed", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (TCPIP::127\.0\.0\.1::\d+::SOCKET) with faults \{'drop_after': 3\}", line)
        assert m, line
        res = pyvisa.ResourceManager("@py").open_resource(m.group(1), read_termination="\n",
                                                          write_termination="\n", timeout=500)
        assert res.query("*IDN?").startswith("Lumen")
        res.query("*OPC?")
        res.write("*CLS")                            # the 3rd command: the connection is dropped after it
        with pytest.raises(pyvisa.errors.VisaIOError):
            res.query("*OPC?")
        res.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "stopped: " in err and "'drop': 1" in err


def test_chip_description_file(tmp_path):
    from hwloop.bench import ChipSpec
    from hwloop.errors import HwloopError

    good = tmp_path / "chip.yaml"
    good.write_text("model: ANB-1K\nmax_inputs: 1024\nmax_outputs: 128\ninput_range: [0, 1]\n")
    spec = ChipSpec.from_yaml(good)
    assert (spec.model, spec.max_inputs, spec.input_range) == ("ANB-1K", 1024, (0, 1))
    for text, msg in (("max_inputs: lots\n", "max_inputs: expected int"), ("speed: 3\n", "unknown key 'speed'"),
                      ("input_range: [0, 1, 2]\n", "input_range: expected tuple")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(HwloopError, match=msg):
            ChipSpec.from_yaml(bad)
