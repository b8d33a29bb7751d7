"""``hwloop check --device``: where a sampled check's emulators compute (as ``hwloop run --device``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwloop.check import Bars, Settings, check_model
from hwloop.cli import main

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")
BARS = Bars(max_drop=0.05, max_flip_rate=0.2)


def test_cpu_is_the_default_numbers(demo_onnx):
    here = check_model(demo_onnx, profile="crossbar", data="digits@300", settings=Settings(BARS, repeats=6))
    cpu = check_model(demo_onnx, profile="crossbar", data="digits@300",
                      settings=Settings(BARS, repeats=6, device="cpu"))
    assert np.array_equal(cpu.accuracy, here.accuracy) and cpu.decision == here.decision
    assert [b.estimate.value for b in cpu.bars] == [b.estimate.value for b in here.bars]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: cuda is a valid device here")
def test_a_device_torch_cannot_use_is_one_line(demo_onnx, capsys):
    assert main(["check", str(demo_onnx), "--profile", "semenova", "--max-drop", "0.05", "--device", "cuda",
                 "--repeats", "4", "--no-cache"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "cuda" in err


@pytest.mark.gpu
@GPU
def test_gpu_check_matches_the_cpu_statistically(demo_onnx):
    """The GPU draws other numbers from the same keys (another generator); the accuracy over 50 repeats agrees
    with the CPU's within 4 standard errors of the difference."""
    runs = [check_model(demo_onnx, profile="semenova", data="digits",
                        settings=Settings(BARS, repeats=50, device=d)) for d in ("cpu", "cuda")]
    a, b = (r.accuracy for r in runs)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9
    again = check_model(demo_onnx, profile="semenova", data="digits", settings=Settings(BARS, repeats=50,
                                                                                         device="cuda"))
    assert np.array_equal(again.accuracy, b)                       # same seed, same numbers on the GPU
