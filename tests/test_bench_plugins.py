"""Device plug-ins in bench files: ``type: module:Class``, entry points, errors naming file, line and key."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from hwloop.bench import load_bench, open_device
from hwloop.cli import main
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.store import open_run

OWN = "examples.own_chip:OpticalChip"


def write(tmp_path, text: str, name: str = "bench.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def lab_package(tmp_path, monkeypatch):
    """A throw-away package 'mylab_chips' with a real dist-info that registers entry points."""
    site = tmp_path / "site"
    (site / "mylab_chips").mkdir(parents=True)
    (site / "mylab_chips" / "__init__.py").write_text(textwrap.dedent("""\
        from examples.own_chip import OpticalChip

        class Broken(OpticalChip):
            def program(self, layer, *, seed=0):
                raise RuntimeError("laser interlock open")

        class NotADevice:
            pass
        """))
    info = site / "mylab_chips-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab-chips\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[hwloop.devices]\noptical = mylab_chips:OpticalChip\nbroken = mylab_chips:Broken\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_own_chip_runs_from_the_command_line(tmp_path, mlp_onnx, capsys):
    bench = write(tmp_path, f"""\
        devices:
          optical: {{type: {OWN}, serial: OC-7, noise: 0.02}}
        layers: {{0: optical}}
        """)
    out = tmp_path / "run.zarr"
    assert main(["run", str(mlp_onnx), "--bench", str(bench), "--data", "digits@50", "--repeats", "40",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    run = open_run(out)
    y = np.asarray(run.layer(0)).astype(np.float64)           # (repeat, sample, neuron)
    clean = np.asarray(run.clean(0)).astype(np.float64)
    assert np.abs(y.mean(0) - clean).max() < 6 * 0.02 / np.sqrt(40)   # unbiased around the clean output
    var = y.var(0, ddof=1).mean()                                 # 50*32 cells of 39 degrees of freedom
    assert abs(var / 0.02 ** 2 - 1) < 6 * np.sqrt(2 / 39 / (50 * 32))
    assert np.var(np.asarray(run.layer(1)), axis=0).max() > 0     # layer 1 (ideal emulator) carries the chip's noise
    devs = run.attrs["devices"]
    assert devs[0]["type"] == "OpticalChip" and devs[0]["serial"] == "OC-7"
    assert run.attrs["bench"]["devices"]["optical"]["type"] == OWN


def test_entry_point_short_name(lab_package, tmp_path, mlp_onnx):
    bench = load_bench(write(tmp_path, "devices:\n  sdk: {type: optical, noise: 0.0}\ndefault: sdk\n"))
    model = load_model(mlp_onnx)
    devs = bench.devices(model)
    assert devs[0].inner is devs[3].inner and type(devs[0].inner).__name__ == "OpticalChip"   # no sibling(): one
    assert devs[0].describe()["type"] == "OpticalChip"                                        # instance, views
    dev = open_device(tmp_path / "bench.yaml")
    assert dev.origin.endswith("bench.yaml:2: devices: sdk")
    L = model.layers[0]
    dev.program(L)
    x = np.random.default_rng(0).random((1, 3, L.n_in), dtype=np.float32)
    ref = 1 / (1 + np.exp(-(x[0].astype(np.float64) @ L.weight.T + L.bias)))
    assert np.allclose(dev.run(x, repeats=2, key=(0, 0, 0)), ref, atol=1e-6)


@pytest.mark.parametrize("device, message", [
    ("{type: nosuchlab.chips:Chip}", r"bench.yaml:2: devices: c: type: cannot import module 'nosuchlab.chips' "
                                     r"\(ModuleNotFoundError"),
    ("{type: 'examples.own_chip:Nope'}", r"bench.yaml:2: devices: c: type: module 'examples.own_chip' has no 'Nope'"),
    ("{type: 'mylab_chips:NotADevice'}", r"bench.yaml:2: devices: c: type: mylab_chips:NotADevice is not a hwloop "
                                         r"Device"),
    ("{type: photonic}", r"bench.yaml:2: devices: c: type: no device type 'photonic' \(known: .*optical"),
    ("\n    type: optical\n    colour: red", r"bench.yaml:4: devices: c: colour: OpticalChip takes no keyword "
                                           r"'colour' \(it takes: serial, noise\)"),
    ("{type: optical, noise: -1}", r"bench.yaml:2: device 'c': OpticalChip\(...\) failed: ValueError: noise must"),
])
def test_bad_plugins_name_file_line_and_key(lab_package, tmp_path, mlp_onnx, capsys, device, message):
    p = write(tmp_path, "devices:\n  c: " + device + "\ndefault: c\n")
    with pytest.raises(HwloopError, match=message):
        load_bench(p).devices(load_model(mlp_onnx))
    assert main(["run", str(mlp_onnx), "--bench", str(p), "--data", "digits@5", "--out",
                 str(tmp_path / "r.zarr")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r.zarr").exists()


def test_device_raising_on_program_names_the_bench_line(lab_package, tmp_path, mlp_onnx, capsys):
    p = write(tmp_path, "devices:\n  ok: {type: optical}\n  bad: {type: broken}\nlayers: {0: ok, 2: bad}\n")
    out = tmp_path / "r.zarr"
    assert main(["run", str(mlp_onnx), "--bench", str(p), "--data", "digits@5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "bench.yaml:3: devices: bad: program(layer 2" in err and "RuntimeError: laser interlock open" in err
    assert not out.exists()


def test_the_guide_shows_the_tested_example():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "own-chip.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0].strip()
    assert code and code in (root / "examples" / "own_chip.py").read_text()
    assert code.count("\n") <= 40


TWIN = """\
name: optical-twin
version: 1
provenance: {source: hand-written}
noise: {units: variance, D_A: 4.0e-4, placement: post}
"""


def test_own_chip_through_check_and_validate(tmp_path, demo_onnx, capsys):
    (tmp_path / "optical-twin.yaml").write_text(TWIN)
    bench = write(tmp_path, f"devices:\n  optical: {{type: {OWN}, noise: 0.02, twin: optical-twin.yaml}}\n")
    common = ["--data", "digits@200", "--repeats", "20"]
    assert main(["check", str(demo_onnx), "--bench", str(bench), "--min-accuracy", "0.8", *common]) == 0
    assert "bench.yaml:optical" in capsys.readouterr().out
    assert main(["check", str(demo_onnx), "--bench", str(bench), "--min-accuracy", "0.99", *common]) == 1
    capsys.readouterr()
    # the twin named in the bench file (twin:) is the default profile
    assert main(["validate", "--bench", str(bench), "--model", str(demo_onnx), *common]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    # a twin with twice the noise variance fails
    assert main(["validate", "semenova", "--bench", str(bench), "--model", str(demo_onnx), *common]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out


def test_own_chip_calibrates_from_the_command_line(tmp_path, capsys):
    """calibrate --bench on the plug-in: the bench file says what the calibration must know (capabilities:)."""
    from hwloop.profiles import load_profile

    bench = write(tmp_path, f"""\
        devices:
          optical:
            type: {OWN}
            noise: 0.02
            capabilities: {{max_inputs: 16, max_outputs: 8, input_range: [-1, 1], weight_max: 1.0,
                            output_range: [-8, 8], activations: [linear, sigmoid]}}
          twin: {{profile: ideal}}
        """)
    out = tmp_path / "c.yaml"
    assert main(["calibrate", "--bench", str(bench), "--out", str(out)]) == 2
    assert "declares 2 devices (optical, twin): name one with --device" in capsys.readouterr().err
    assert main(["calibrate", "--bench", str(bench), "--device", "optical", "--out", str(out),
                 "--budget", "20000"]) == 0, capsys.readouterr().err
    noise = load_profile(out).data["noise"]
    assert noise["D_A"] == pytest.approx(0.02 ** 2, rel=0.1)       # the board's detector noise, std 0.02
    assert noise["D_M"] == 0 and noise["D_AC"] == 0
