"""A source/measure bench described in YAML only: inputs from a generator, outputs from a digitizer, weights
fixed in the hardware; two simulated instruments on real TCP sockets, reached through real pyvisa."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from exporters.handbuilt import write_onnx
from hwloop.bench.described import DescribedDevice
from hwloop.bench.described_server import DescribedController, DialectFaults
from hwloop.bench.instrument import SHIPPED
from hwloop.cli import main
from hwloop.errors import DeviceError
from hwloop.layer import AnalogLayer, activate
from hwloop.store import open_run

W = np.random.default_rng(7).uniform(-1, 1, (4, 8)).astype(np.float32)     # the chip's fixed weights
BIAS = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
STEP = 20 / (2 ** 16 - 1)


@pytest.fixture
def instruments():
    started = []

    def make(**faults):
        source = DescribedController("awg-digitizer", role="source", fixed_weights=W,
                                     faults=DialectFaults(**faults.get("source", {}))).start()
        measure = source.instrument("measure")
        measure.faults = DialectFaults(**faults.get("measure", {}))
        measure.start()
        started.extend([source, measure])
        return {"source": source.resource, "measure": measure.resource}

    yield make
    for c in started:
        c.stop()


def layer(act="sigmoid", weight=W):
    return AnalogLayer(0, "fc", "Gemm", weight, BIAS, act)


@pytest.mark.parametrize("faults", [
    {"source": {"drop_after": 30}, "measure": {"error_after": 25}},     # a dropped link, a queued error
    {"measure": {"garble_after": 12}},                                   # a garbled reply (SYST:ERR?)
    {"measure": {"delay_after": 12, "delay_s": 1.0}},                    # a late one (timeout 300 ms)
])
def test_outputs_equal_the_ideal_layer_and_faults_are_survived(instruments, faults):
    res = instruments(**faults)
    x = np.random.default_rng(1).uniform(-2, 2, (1, 300, 8)).astype(np.float32)   # 300 > max_batch 128
    with DescribedDevice("awg-digitizer", resources=res, retries=3, backoff_s=0.001, timeout_ms=300) as dev:
        dev.program(layer())
        y = dev.run(x, repeats=30)                                               # 30 > max_repeats 20
        d = dev.describe()
    ideal = activate("sigmoid", x[0].astype(np.float64) @ W.T.astype(np.float64) + BIAS)
    assert y.shape == (30, 300, 4)
    assert np.abs(y - ideal[None]).max() <= STEP / 2 * 1.01      # sigmoid on the host: its slope <= 1/4
    assert d["placement"]["activation"] == "host" and d["placement"]["reason"] == "weights fixed in the hardware"
    assert d["reconnects"] >= 1 and d["retries"] >= len([f for v in faults.values() for f in v if "after" in f])
    assert "awg-digitizer:source" in d["idn"] and "awg-digitizer:measure" in d["idn"]


def test_other_weights_and_wrong_trigger_order_are_refused(instruments, tmp_path):
    res = instruments()
    with DescribedDevice("awg-digitizer", resources=res) as dev:
        with pytest.raises(DeviceError, match=r"does not have the weights fixed in awg-digitizer .*CAL:WEIG\?"):
            dev.program(layer(weight=np.eye(4, 8, dtype=np.float32)))
    wrong = tmp_path / "wrong.yaml"
    text = (SHIPPED / "awg-digitizer.yaml").read_text()
    wrong.write_text(text.replace('["measure> ACQ:ARM", "source> OUTP:TRIG"]', '["source> OUTP:TRIG", "measure> ACQ:ARM"]'))
    with DescribedDevice(str(wrong), resources=res, retries=1, backoff_s=0.001) as dev:
        dev.program(layer())
        with pytest.raises(DeviceError, match=r"controller error \(source\) -221, 'Settings conflict: trigger out"):
            dev.run(np.zeros((1, 2, 8), np.float32), repeats=1)


def fixed_weight_run(tmp_path, res: dict, samples: int = 40) -> None:
    """m.onnx (Gemm with the chip's weights, Tanh), d.npz (``samples`` inputs) and bench.yaml in ``tmp_path``."""
    nodes = [helper.make_node("Gemm", ["input", "W", "b"], ["z"], transB=1), helper.make_node("Tanh", ["z"], ["output"])]
    write_onnx(tmp_path / "m.onnx", nodes, {"input": [None, 8]}, {"output": [None, 4]}, {"W": W, "b": BIAS})
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.uniform(-1, 1, (samples, 8)).astype(np.float32),
             y=rng.integers(0, 4, samples))
    bench = tmp_path / "bench.yaml"
    bench.write_text("devices:\n  sm:\n    type: described\n    description: awg-digitizer\n"
                     f"    resources: {{source: \"{res['source']}\", measure: \"{res['measure']}\"}}\n"
                     "default: sm\n")


def test_run_from_a_bench_file(instruments, tmp_path, capsys):
    fixed_weight_run(tmp_path, instruments())
    bench = tmp_path / "bench.yaml"
    out = tmp_path / "run.zarr"
    assert main(["run", str(tmp_path / "m.onnx"), "--bench", str(bench), "--data", f"npz:{tmp_path / 'd.npz'}",
                 "--repeats", "3", "--out", str(out)]) == 0, capsys.readouterr().err
    run = open_run(out)
    assert np.abs(np.asarray(run.layer(0)) - np.asarray(run.clean(0))[None]).max() <= STEP / 2 * 1.01
    assert run.attrs["devices"][0]["dialect"] == "awg-digitizer"
