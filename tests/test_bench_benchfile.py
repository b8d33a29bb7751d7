"""Bench files: devices by name, layers by index or name, errors naming file, line and key."""

from __future__ import annotations

import numpy as np
import pytest

from hwloop.bench import VisaDevice, load_bench
from hwloop.devices import Emulator
from hwloop.errors import HwloopError
from hwloop.graph import load_model

from helpers import hwloop

pytest_plugins = ["tests.bench_fixtures"]

CLOSED = "TCPIP::127.0.0.1::1::SOCKET"      # nothing listens on port 1


def write(tmp_path, text: str):
    p = tmp_path / "bench.yaml"
    p.write_text(text)
    return p


def test_mixed_bench_maps_layers(tmp_path, sim_bench, mlp_onnx):
    model = load_model(mlp_onnx)
    p = write(tmp_path, f"""\
devices:
  chip:
    resource: "{sim_bench.resource}"
    timeout_ms: 2000
  twin:
    profile: semenova
layers:
  0: chip
  {model.layers[2].name}: chip
default: twin
""")
    bench = load_bench(p)
    devs = bench.devices(model)
    try:
        assert isinstance(devs[0], VisaDevice) and isinstance(devs[2], VisaDevice)
        assert devs[0].link is devs[2].link                       # one connection per controller
        assert isinstance(devs[1], Emulator) and devs[1].profile.name == "semenova"
        assert isinstance(devs[3], Emulator)
        assert bench.describe()["devices"]["chip"]["resource"] == sim_bench.resource
    finally:
        for d in devs.values():
            d.close()


def test_run_with_bench_records_chip_provenance(tmp_path, make_bench, mlp_onnx):
    small = make_bench(max_inputs=32, max_outputs=16)          # layer 0 (32x64) needs 2x2 tiles
    p = write(tmp_path, f"devices:\n  chip: {{resource: \"{small.resource}\"}}\nlayers:\n  0: chip\n  1: chip\n")
    out = tmp_path / "run.zarr"
    r = hwloop("run", mlp_onnx, "--bench", p, "--data", "digits@40", "--repeats", "2", "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    from hwloop.store import open_run
    from hwloop.runner import run_model

    run = open_run(out)
    text = str(run.attrs)
    assert "ANB-64R" in text and "SN0042" in text
    chip0 = run.attrs["devices"][0]
    assert chip0["type"] == "VisaDevice" and 20 < chip0["temperature_c"] < 30
    assert chip0["tiling"] == {"tiles": 4, "grid": [2, 2], "host_bias_and_activation": True, "chip_activation": "LIN"}
    assert run.attrs["devices"][1]["tiling"]["grid"] == [2, 1] and run.attrs["devices"][2]["type"] == "Emulator"
    ref = run_model(mlp_onnx, "digits@40", repeats=2)
    np.testing.assert_allclose(run.output.values, ref.output, atol=1e-3)


def test_plan_touches_no_hardware(tmp_path, mlp_onnx):
    model = load_model(mlp_onnx)
    p = write(tmp_path, f"""\
devices:
  chip: {{resource: "{CLOSED}", capacity: [32, 16, 100, 1000]}}
default: chip
""")
    plan = load_bench(p).plan(model, n_samples=360, batch_size=120, repeats=10)
    lines = plan.splitlines()
    assert "360 samples in 3 batches of 120, 10 repeats" in lines[0]
    # layer 0: 32 outputs x 64 inputs on a 32x16 array -> 2x2 tiles; 120 rows > max_batch 100 -> 2 chunks each
    assert "4 tile(s) (2x2)" in lines[1] and "8 measurement(s) per batch" in lines[1]
    assert "round trips to chips" in lines[-2]
    assert lines[-1] == "  schedule: one batch at a time through every layer (chip chip serves several layers)"
    (tmp_path / "two").mkdir()
    two = write(tmp_path / "two", f"""\
devices:
  a: {{resource: "{CLOSED}"}}
  b: {{resource: "{CLOSED}"}}
layers: {{0: a, 1: b}}
""")
    assert load_bench(two).plan(model, n_samples=360, batch_size=120, repeats=10).splitlines()[-1] \
        .startswith("  schedule: pipelined")
    r = hwloop("run", mlp_onnx, "--bench", p, "--dry-run", "--data", "digits@360", "--batch-size", "120",
               "--repeats", "10", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 tile(s) (2x2)" in r.stdout


@pytest.mark.parametrize("text, message", [
    ("devices:\n  chip: {resource: \"%s\"}\nlayers:\n  0: chipp\n", r"bench.yaml:4: 0: unknown device 'chipp'"),
    ("devices:\n  chip: {resource: \"%s\"}\ndefault: nope\n", r"bench.yaml:3: default: unknown device 'nope'"),
    ("devices:\n  chip: {resource: \"%s\", speed: 3}\n", r"bench.yaml:2: devices: chip: speed: unknown key"),
    ("devices:\n  chip: {resource: \"%s\", retries: many}\n", r"bench.yaml:2: devices: chip: retries: expected int"),
    ("devices:\n  chip: {resource: \"%s\", profile: ideal}\n", r"bench.yaml:2: devices: chip: profile: .*not both"),
    ("devices:\n  chip: {resource: \"%s\"}\n  chip: {profile: ideal}\n", r"bench.yaml:3: duplicate key 'chip'"),
    ("devices:\n  twin: {profile: no_such_profile}\n", r"bench.yaml:2: devices: twin: profile: .*no_such_profile"),
    ("devices:\n  chip: {resource: nonsense}\n", r"bench.yaml:2: devices: chip: resource: 'nonsense' is not a VISA"),
    ("devices: [a, b]\n", r"bench.yaml:1: devices: a mapping"),
    ("devicez:\n  chip: {resource: \"%s\"}\n", r"bench.yaml:1: devicez: unknown key"),
    ("devices:\n  chip: {resource: \"%s\"\n", r"bench.yaml:\d+: not valid YAML"),
    ("- 1\n- 2\n", r"bench.yaml:1: a bench file is a mapping"),
])
def test_bad_bench_files(tmp_path, text, message):
    with pytest.raises(HwloopError, match=message):
        load_bench(write(tmp_path, text.replace("%s", CLOSED)))


@pytest.mark.parametrize("layers, message", [
    ("  0: chip\n  NAME1: chip\n", r"bench.yaml:6: layers: 'NAME1': layer 0 is mapped twice \(also by 0 on line 5\)"),
    ("  7: chip\n", r"bench.yaml:5: layers: 7: no analog layer 7 in mlp.onnx \(it has 0..3\)"),
    ("  fc9: chip\n", r"bench.yaml:5: layers: 'fc9': no analog layer of that name"),
])
def test_bad_layer_mappings(tmp_path, mlp_onnx, layers, message):
    model = load_model(mlp_onnx)
    text = f"devices:\n  chip: {{resource: \"{CLOSED}\"}}\n  twin: {{}}\nlayers:\n" + layers
    bench = load_bench(write(tmp_path, text.replace("NAME1", model.layers[0].name)))
    with pytest.raises(HwloopError, match=message.replace("NAME1", model.layers[0].name)):
        bench.devices(model)
    with pytest.raises(HwloopError, match=message.replace("NAME1", model.layers[0].name)):
        bench.plan(model, 10, 10, 1)


def test_unreachable_resource_names_file_line_and_device(tmp_path, mlp_onnx):
    p = write(tmp_path, f"devices:\n  twin: {{}}\n  chip:\n    resource: \"{CLOSED}\"\n    retries: 0\n"
                        "layers:\n  1: chip\n")
    with pytest.raises(HwloopError, match=rf"bench.yaml:3: device 'chip': cannot reach bench controller {CLOSED}"):
        load_bench(p).devices(load_model(mlp_onnx))
