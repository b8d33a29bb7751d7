"""VISA libraries chosen per bench file or device; a run against a pyvisa-sim fixed-weight chip (``@sim``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from exporters.handbuilt import write_onnx
from hwloop.bench import load_bench
from hwloop.cli import main
from hwloop.store import open_run

PERMUTATION = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)   # the weights fixed in sim/fixed_chip.yaml


def fixed_model(path, weight=PERMUTATION):
    """Gemm(3 -> 3) + Sigmoid: the layer the simulated chip holds (with a bias, applied on the host)."""
    nodes = [helper.make_node("Gemm", ["input", "W", "b"], ["z"], transB=1),
             helper.make_node("Sigmoid", ["z"], ["output"])]
    inits = {"W": weight, "b": np.array([0.5, -0.25, 0], np.float32)}
    return write_onnx(path, nodes, {"input": [None, 3]}, {"output": [None, 3]}, inits, name="fixed")


@pytest.fixture
def fixed_setup(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (12, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=rng.integers(0, 3, 12))
    return fixed_model(tmp_path / "fixed.onnx"), tmp_path / "data.npz"


@pytest.mark.parametrize("where", ["device", "file"])
def test_run_on_a_pyvisa_sim_fixed_weight_chip(tmp_path, fixed_setup, where, capsys):
    model, data = fixed_setup
    lib = '  visa_library: "@sim"\n' if where == "device" else ""
    top = 'visa_library: "@sim"\n' if where == "file" else ""
    bench = tmp_path / "bench.yaml"
    bench.write_text(f'{top}devices:\n  chip:\n    type: fixed-weight\n    resource: "TCPIP::fixedchip::INSTR"\n'
                     + lib.replace("  ", "    ", 1) + "default: chip\n")
    out = tmp_path / "run.zarr"
    assert main(["run", str(model), "--bench", str(bench), "--data", f"npz:{data}", "--repeats", "2",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    run = open_run(out)
    y, clean = np.asarray(run.layer(0)), np.asarray(run.clean(0))
    assert np.abs(y - clean[None]).max() < 1e-6          # the chip's readings, through the host's bias and sigmoid
    dev = run.attrs["devices"][0]
    assert dev["idn"].startswith("hwloop sim,FWC-3") and dev["visa_library"].endswith("fixed_chip.yaml@sim")
    assert dev["placement"]["activation"] == "host"


def test_fixed_chip_refuses_other_weights_and_ranges(tmp_path, fixed_setup, capsys):
    _, data = fixed_setup
    other = fixed_model(tmp_path / "other.onnx", np.eye(3, dtype=np.float32))
    bench = tmp_path / "bench.yaml"
    bench.write_text('devices:\n  chip: {type: fixed-weight, resource: "ASRL7::INSTR", visa_library: "@sim"}\n'
                     "default: chip\n")
    assert main(["run", str(other), "--bench", str(bench), "--data", f"npz:{data}", "--out",
                 str(tmp_path / "r.zarr")]) == 2
    err = capsys.readouterr().err
    assert "bench.yaml:2: devices: chip: layer 0" in err and "does not have the weights fixed in chip" in err
    np.savez(tmp_path / "big.npz", x=np.full((2, 3), 2.0, np.float32), y=np.zeros(2, int))
    assert main(["run", str(fixed_setup[0]), "--bench", str(bench), "--data", f"npz:{tmp_path / 'big.npz'}",
                 "--out", str(tmp_path / "r.zarr")]) == 2
    assert "accepts [-1, 1] (INP:RANG?)" in capsys.readouterr().err


def test_visa_library_is_passed_to_pyvisa(tmp_path, mlp_onnx, sim_bench):
    from hwloop.graph import load_model

    p = tmp_path / "bench.yaml"
    p.write_text(f'visa_library: "@py"\ndevices:\n  chip: {{resource: "{sim_bench.resource}"}}\n')
    devs = load_bench(p).devices(load_model(mlp_onnx), only="chip")
    try:
        assert devs[0].options["visa_library"] == "@py"
        assert type(devs[0].link._rm.visalib).__module__.startswith("pyvisa_py")
    finally:
        devs[0].close()
    p.write_text(f'devices:\n  chip: {{resource: "{sim_bench.resource}", visa_library: "/no/such/libvisa.so"}}\n')
    from hwloop.errors import HwloopError

    with pytest.raises(HwloopError, match=r"bench.yaml:2: device 'chip': VISA library '/no/such/libvisa.so' "
                                          r"cannot be opened"):
        load_bench(p).devices(load_model(mlp_onnx), only="chip")


pytest_plugins = ["tests.bench_fixtures"]
