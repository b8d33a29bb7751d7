"""One driver: the ANB dialect is a YAML description run by the generic driver, like any other dialect.

Real pyvisa over real TCP sockets: the simulated ANB controller (``SimulatedBench``) and the simulated
controller of a described ASCII dialect (``DescribedController``)."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.bench import VisaDevice
from hwloop.bench.described import DescribedDevice
from hwloop.bench.described_server import DescribedController
from hwloop.bench.instrument import SHIPPED, load_description
from hwloop.errors import HwloopError
from hwloop.layer import AnalogLayer, activate

pytest_plugins = ["tests.bench_fixtures"]


def layer(n_out=12, n_in=20, act="tanh", seed=0):
    rng = np.random.default_rng(seed)
    return AnalogLayer(0, "fc", "Gemm", rng.uniform(-0.5, 0.5, (n_out, n_in)).astype(np.float32),
                       rng.uniform(-0.2, 0.2, n_out).astype(np.float32), act)


def test_anb_is_a_description_and_visa_device_is_the_generic_driver(make_bench):
    d = load_description("anb")
    assert d.block and d.data["measure"]["wait"] == {"opc": "*OPC?"} and d.limits()["weight_range"] is None
    bench = make_bench(max_inputs=16, max_outputs=8, max_batch=32)        # tiles and chunks
    L = layer()
    x = np.random.default_rng(1).uniform(-0.9, 0.9, (1, 70, 20)).astype(np.float32)
    with VisaDevice(bench.resource) as a:                       # the controller serves one connection at a time
        assert isinstance(a, DescribedDevice) and a.desc.path == SHIPPED / "anb.yaml"
        with pytest.warns(UserWarning, match="tanh runs on the host .the layer is split into tiles"):
            a.program(L)
        ya = a.run(x, repeats=2)
        assert a.describe()["dialect"] == "anb" and a.describe()["tiling"]["tiles"] == 4
        assert a.stats["written_behind"] >= 1                 # streamed: one round trip per measurement
    bench.wait_disconnected()
    with DescribedDevice("anb", bench.resource) as b, pytest.warns(UserWarning, match="tanh runs on the host"):
        b.program(L)
        yb = b.run(x, repeats=2)
    assert np.array_equal(ya, yb)
    step = 32 / (2 ** 16 - 1)
    ideal = activate("tanh", x[0].astype(np.float64) @ L.weight.T.astype(np.float64) + L.bias)
    assert np.abs(ya - ideal[None]).max() <= 2 * step          # two tiles' partial sums, each within step/2


def test_an_ascii_dialect_that_waits_with_opc_is_streamed(tmp_path):
    """acme-nc with ``wait: {opc: ...}``: the same streaming path as ANB, with ASCII lists."""
    text = (SHIPPED / "acme-nc.yaml").read_text()
    poll = 'wait: {poll: "BUSY?", until: "0", interval_s: 0.0005}'
    assert poll in text
    desc = tmp_path / "acme-opc.yaml"
    desc.write_text(text.replace(poll, 'wait: {opc: "*OPC?"}'))
    ctl = DescribedController(str(desc)).start()
    try:
        L = layer(act="sigmoid")
        x = np.random.default_rng(2).uniform(-0.9, 0.9, (1, 150, 20)).astype(np.float32)   # 3 chunks of 64
        with DescribedDevice(str(desc), ctl.resource) as dev:
            dev.program(L)
            y = dev.run(x, repeats=3)
            assert dev.streams and dev.stats["written_behind"] == 2 and dev.stats["measurements"] == 3
            sib = dev.sibling()                     # a second layer on the same controller: the same connection
            assert sib.hardware is dev.hardware and sib.links == dev.links
            sib.close()
            assert np.array_equal(dev.run(x, repeats=3), y)     # still connected; the ideal chip repeats itself
    finally:
        ctl.stop()
    ideal = activate("sigmoid", x[0].astype(np.float64) @ L.weight.T.astype(np.float64) + L.bias)
    assert np.abs(y - ideal[None]).max() <= 16 / (2 ** 14 - 1) / 2 * 1.01


@pytest.mark.parametrize("edit, message", [
    ('inputs: "INP {values}"', ('inputs: "INP {values} NOW"', r"anb.yaml:\d+: measure.inputs: \{values\} must end")),
    ('weights: "WEIG:RANG?", ', ("", r"anb.yaml:\d+: ranges: give weights:, bias:, inputs: and outputs:")),
    ("format: block", ("format: binary", r"anb.yaml:\d+: data.format: must be one of ascii, block")),
])
def test_bad_descriptions_name_file_line_and_key(tmp_path, edit, message):
    text = (SHIPPED / "anb.yaml").read_text()
    assert edit in text
    p = tmp_path / "anb.yaml"
    p.write_text(text.replace(edit, message[0]))
    with pytest.raises(HwloopError, match=message[1]):
        load_description(p)


def test_an_unknown_driver_option_in_a_bench_file_names_its_key(tmp_path):
    from hwloop.bench import load_bench

    bench = tmp_path / "bench.yaml"
    bench.write_text('devices:\n  nc:\n    type: described\n    description: acme-nc\n'
                     '    resource: "TCPIP::127.0.0.1::1::SOCKET"\n    timeout: 5\n')
    with pytest.raises(HwloopError, match=r"bench.yaml:6: devices: nc: timeout: unknown option \(known: .*timeout_ms"):
        load_bench(bench)
