"""A second controller dialect described in YAML only: one generic driver, its own simulated controller,
real pyvisa over a real TCP socket."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import killed_then_resumed

from hwloop.bench.described import DescribedDevice
from hwloop.bench.described_server import DescribedController, DialectFaults
from hwloop.bench.instrument import load_description
from hwloop.cli import main
from hwloop.errors import DeviceError, HwloopError
from hwloop.layer import AnalogLayer, activate
from hwloop.store import open_run

STEP = 16 / (2 ** 14 - 1)        # acme-nc: 14-bit ADC over [-8, 8]


@pytest.fixture
def controller():
    started = []

    def make(profile=None, **faults):
        c = DescribedController("acme-nc", profile, faults=DialectFaults(**faults)).start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


def layer(n_out=12, n_in=20, act="sigmoid", scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    w = (scale * rng.uniform(-1, 1, (n_out, n_in))).astype(np.float32)
    return AnalogLayer(0, "fc", "Gemm", w, rng.uniform(-0.5, 0.5, n_out).astype(np.float32), act)


def ideal(L, x):
    return activate(L.activation, x.astype(np.float64) @ L.weight.T.astype(np.float64) + L.bias)


@pytest.mark.parametrize("act, scale, n_in", [("sigmoid", 1.0, 20), ("relu", 3.0, 20), ("tanh", 1.0, 70)])
def test_noise_free_outputs_equal_the_ideal_layer(controller, act, scale, n_in):
    """Within the ADC step (times the scale): plain, scaled (weights 3 > WRANGE 2), and tiled (70 > 32 inputs)."""
    c = controller()
    L = layer(act=act, scale=scale, n_in=n_in)
    x = np.random.default_rng(1).uniform(-0.3, 0.3, (1, 150, n_in)).astype(np.float32)   # 150 > max_batch 64
    with DescribedDevice("acme-nc", c.resource) as dev:
        dev.program(L)
        y = dev.run(x, repeats=3)
        s = dev.plan.weight_scale
        tiles = len(dev.plan.tiles)
    assert y.shape == (3, 150, 12)
    assert np.abs(y - ideal(L, x[0])[None]).max() <= tiles * s * STEP / 2 * 1.01 + 1e-6
    assert (s, tiles) == {"sigmoid": (1.0, 1), "relu": (2.0, 1), "tanh": (1.0, 3)}[act]


def test_faults_are_survived_and_every_batch_recorded_once(controller, tmp_path, mlp_onnx):
    """A dropped connection and a queued controller error, in a run through the command line."""
    c = controller(drop_after=40, error_after=90)
    bench = tmp_path / "bench.yaml"
    bench.write_text(f'devices:\n  nc: {{type: described, description: acme-nc, resource: "{c.resource}"}}\n'
                     "layers: {2: nc, 3: nc}\n")
    out = tmp_path / "run.zarr"
    assert main(["run", str(mlp_onnx), "--bench", str(bench), "--data", "digits@30", "--repeats", "2",
                 "--batch-size", "10", "--out", str(out)]) == 0
    run = open_run(out)
    for k in (2, 3):
        assert np.abs(np.asarray(run.layer(k))[0] - np.asarray(run.clean(k))).max() < 4 * STEP
    devs = run.attrs["devices"]
    assert devs[2]["dialect"] == "acme-nc" and devs[2]["reconnects"] + devs[3]["reconnects"] >= 1
    assert devs[2]["retries"] + devs[3]["retries"] >= 2
    assert c.faults.drop_after is None and c.faults.error_after is None        # both fired


@pytest.mark.parametrize("fault", [{"garble_after": 21}, {"delay_after": 21, "delay_s": 1.0}])   # 21: a RESULT?
def test_garbled_and_late_replies_are_survived(controller, fault):
    c = controller(**fault)
    L = layer()
    x = np.random.default_rng(2).uniform(-0.3, 0.3, (1, 200, 20)).astype(np.float32)
    with DescribedDevice("acme-nc", c.resource, timeout_ms=300, backoff_s=0.001) as dev:
        dev.program(L)
        y = dev.run(x, repeats=2)
        assert dev.retried >= 1 and dev.reconnects >= 1
    assert np.abs(y - ideal(L, x[0])[None]).max() <= STEP / 2 * 1.01
    assert all(v is None for k, v in vars(c.faults).items() if k.endswith("_after"))     # it fired


def test_controller_errors_are_reported_in_its_own_format(controller, tmp_path):
    from hwloop.bench.instrument import SHIPPED

    c = controller()
    with DescribedDevice("acme-nc", c.resource) as dev:
        assert dev.ask("FOO?") == "" and dev.ask("ERR?") == "E-113 Undefined header"
        assert dev.desc.error("E-113 Undefined header") == (-113, "Undefined header")
        assert dev.desc.error("OK") is None
    # a driver whose description names an activation the controller does not know: a persistent error
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((SHIPPED / "acme-nc.yaml").read_text().replace("sigmoid: SIG", "sigmoid: SGM"))
    with DescribedDevice(str(wrong), c.resource, retries=2, backoff_s=0.001) as dev:
        with pytest.raises(DeviceError, match=r"failed after 2 retries: programming \(SIZE, MATRIX, MODE, OFFSETS\): "
                                              r'-224,"Illegal parameter value"'):
            dev.program(layer())
        assert dev.reconnects == 2


@pytest.mark.parametrize("edit, message", [
    (("identify: \"ID?\"", "identify: 5"), r"acme.yaml:7: identify: must be a string"),
    (("dialect: 1", "dialect: 2"), r"acme.yaml:5: dialect: must be 1"),
    (("  trigger: \"GO\"\n", "  trigger: \"GO\"\n  speed: 3\n"), r"acme.yaml:21: measure.speed: unknown key"),
    (("order: column", "order: diagonal"), r"acme.yaml:14: program.weights.order: must be one of row, column"),
    (("  wait: {poll: \"BUSY?\", until: \"0\", interval_s: 0.0005}",
      "  wait: {delay_s: 0.1, opc: \"*OPC?\"}"), r"acme.yaml:21: measure.wait: exactly one of"),
])
def test_bad_descriptions_name_file_line_and_key(tmp_path, edit, message):
    from hwloop.bench.instrument import SHIPPED

    text = (SHIPPED / "acme-nc.yaml").read_text()
    assert edit[0] in text
    p = tmp_path / "acme.yaml"
    p.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(HwloopError, match=message):
        load_description(p)
    bench = tmp_path / "bench.yaml"
    bench.write_text(f'devices:\n  nc: {{type: described, description: "{p}", resource: "TCPIP::127.0.0.1::1::SOCKET"}}\n')
    from hwloop.bench import load_bench

    with pytest.raises(HwloopError, match=r"bench.yaml:2: devices: nc: description: .*" + message):
        load_bench(bench)


@pytest.mark.slow
def test_sigkill_then_resume_on_the_described_dialect(controller, tmp_path, mlp_onnx):
    """Kill -9 a real `hwloop run` on the ACME controller mid-run, --resume, compare with an uninterrupted run."""
    c = controller()
    bench = tmp_path / "bench.yaml"
    bench.write_text(f'devices:\n  nc: {{type: described, description: acme-nc, resource: "{c.resource}"}}\n'
                     "layers: {3: nc}\n")
    args = ["run", str(mlp_onnx), "--bench", str(bench), "--data", "digits@120", "--repeats", "2",
            "--batch-size", "2", "--seed", "3"]                     # 60 batches
    a, b = killed_then_resumed(args, tmp_path)
    assert b.complete
    for k in range(4):       # the ideal chip is deterministic: the same bytes, every batch once
        assert np.asarray(a.layer(k)).tobytes() == np.asarray(b.layer(k)).tobytes()
