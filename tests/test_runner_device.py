"""``device=`` / ``--device``: where the emulators compute.

On ``cpu`` the numbers are the default path's, bit for bit (the same code, no-op moves).  ``cuda`` on a
machine without a usable GPU is one line, exit 2, nothing written.  The GPU tests run only where torch
sees a CUDA device (CI and this project's machines have none: they are skipped with the reason)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from hwloop.cli import main
from hwloop.devices import Emulator
from hwloop.devices.emulator import emulators
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.output, b.output)
    np.testing.assert_array_equal(a.clean_output, b.clean_output)
    for x, y in zip(a.layers + a.clean_layers, b.layers + b.clean_layers):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("profile", ["semenova", "crossbar"])     # conv taken whole / conv as rows, tiles, read noise
@pytest.mark.parametrize("fixture", ["mlp_onnx", "cnn_onnx"])
def test_cpu_device_gives_the_default_numbers(fixture, profile, request, digits):
    model = load_model(request.getfixturevalue(fixture))
    ds = digits.head(60)
    kw = dict(repeats=3, seed=4, batch_size=25)
    default = run_model(model, ds, devices=emulators(load_profile(profile), model.layers), **kw)
    given = run_model(model, ds, devices=emulators(load_profile(profile), model.layers, device="cpu"), **kw)
    moved = run_model(model, ds, devices=emulators(load_profile(profile), model.layers), device="cpu", **kw)
    for r in (given, moved):
        _same(default, r)
    assert moved.attrs["devices"][0]["device"] == "cpu" and "device" not in default.attrs["devices"][0]


def test_run_device_leaves_the_callers_emulators_alone(mlp_onnx, digits):
    devs = emulators(load_profile("semenova"), load_model(mlp_onnx).layers)
    run_model(mlp_onnx, digits.head(20), devices=devs, device="cpu")
    assert all(d.device is None and d.layer is None for d in devs.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_one_line(mlp_onnx, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    assert main(["run", str(mlp_onnx), "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU is usable here" in err and not out.exists()
    with pytest.raises(HwloopError, match="no CUDA GPU"):
        run_model(mlp_onnx, "digits@5", device="cuda")
    with pytest.raises(HwloopError, match="no CUDA GPU"):
        Emulator(device="cuda:0")


def test_unknown_device_is_one_line(mlp_onnx, capsys):
    assert main(["run", str(mlp_onnx), "--device", "tpu", "--dry-run"]) == 2
    assert "not a torch device name" in capsys.readouterr().err


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("fixture", ["mlp_onnx", "cnn_onnx"])
def test_gpu_same_seed_same_numbers_and_cpu_statistics(fixture, request, digits):
    """On the GPU: the same seed twice gives the same numbers; the noise matches the CPU's in distribution
    (two-sample Kolmogorov-Smirnov on the first layer's deviations from the clean values, 4,000 per side)."""
    model = load_model(request.getfixturevalue(fixture))
    ds = digits.head(200)
    kw = dict(repeats=20, seed=1, batch_size=100)

    def run(device):
        return run_model(model, ds, devices=emulators(load_profile("semenova"), model.layers, device=device), **kw)

    gpu, again, cpu = run("cuda"), run("cuda"), run(None)
    _same(gpu, again)
    np.testing.assert_allclose(gpu.clean_layers[0], cpu.clean_layers[0], atol=1e-4)
    # one neuron per (repeat, sample): independent draws (the common-mode terms are shared by a sample's neurons)
    dev_g = (gpu.layers[0] - gpu.clean_layers[0][None])[:, :, 0].ravel()
    dev_c = (cpu.layers[0] - cpu.clean_layers[0][None])[:, :, 0].ravel()
    assert stats.ks_2samp(dev_g, dev_c).pvalue > 1e-3


def test_device_travels_to_dask_workers(cnn_onnx, tmp_path):
    """``--device cpu --workers 1``: the device goes with the job (emulators and reference pass) and the
    sharded store holds the default numbers and names the device."""
    from hwloop.store import open_run

    run = ["run", str(cnn_onnx), "--data", "digits@120", "--repeats", "2", "--batch-size", "40", "--profile",
           "crossbar"]
    assert main([*run, "--out", str(tmp_path / "local.zarr")]) == 0
    assert main([*run, "--out", str(tmp_path / "dask.zarr"), "--device", "cpu", "--workers", "1"]) == 0
    a, b = open_run(tmp_path / "local.zarr"), open_run(tmp_path / "dask.zarr")
    assert b.attrs["devices"][0]["device"] == "cpu"
    for k in range(len(a.layer_names)):
        np.testing.assert_array_equal(a.layer(k).values, b.layer(k).values)
        np.testing.assert_array_equal(a.clean(k).values, b.clean(k).values)
    np.testing.assert_array_equal(a.output.values, b.output.values)
