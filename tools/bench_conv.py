"""Benchmark: convolutional models on the emulator vs onnxruntime, and vs the random-number floor.

LeNet-5 (1x28x28) and a ResNet-18 (CIFAR form, 3x32x32), random weights and
inputs, run in memory by ``hwloop.runner.run_model`` with R repeats carried
through.  Measured in this same run, best of ``--trials`` (contenders taking turns):
  ort       onnxruntime, the whole model, clean, on the same number of rows (samples x R)
  ideal     hwloop with the ideal emulator on every layer (goal >= 0.6x of ort); the ideal device gives
            the same values on every repetition, so each layer is computed once and recorded R times
  ort, R=1 / ideal, R=1   the same on the samples once (one repetition): the cost per computed row
  noisy     hwloop with the ``semenova`` profile on every layer (goal >= 0.3x of ort)
  floor     only the normal draws the noisy run needs (one per recorded value), three ways:
            hwloop.physics.normal (torch, chunked over threads), torch.randn, numpy float32
Throughput is rows/s (a row: one sample, one repetition); "vs ort" = ort time / time.
``--device cuda``: the hwloop contenders compute on the GPU, onnxruntime uses its CUDA provider when
it has one (else the CPU: the line says which), the floor draws on the GPU.

    .venv/bin/python tools/bench_conv.py [--trials 3] [--only lenet5|resnet18] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.models import LeNet5, ResNet18, seeded  # noqa: E402
from exporters.torch_onnx import export_torch  # noqa: E402
from hwloop import physics  # noqa: E402
from hwloop.data import Dataset  # noqa: E402
from hwloop.devices.emulator import emulators  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402
from timing import best  # noqa: E402  (tools/timing.py)

#: name -> (model factory, input shape, samples, repeats)
CASES = {"lenet5": (LeNet5, (1, 28, 28), 1000, 10), "resnet18": (ResNet18, (3, 32, 32), 32, 4)}


def bench(name: str, trials: int, tmp: Path, device: str | None = None) -> None:
    import onnxruntime as ort

    make, shape, n, R = CASES[name]
    with seeded(0):
        net = make().eval()
    path = export_torch(net, tmp / f"{name}.onnx", torch.zeros(2, *shape))
    model = load_model(path)
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    ds = Dataset("random", x, rng.integers(0, 10, n), 10)
    cuda = device is not None and device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"])
    rows = np.ascontiguousarray(np.tile(x, (R, 1, 1, 1)))
    profile = load_profile("semenova")
    noisy_devices = emulators(profile, model.layers, device=device)

    res = run_model(model, ds, repeats=R, batch_size=n, device=device)
    values = sum(a.size for a in res.layers)         # recorded values = normal draws of the noisy run
    err = float(np.abs(res.output[0] - sess.run(None, {"input": x})[0]).max())
    del res
    gen = physics.generator((0,), physics.compute_device(device))
    sync = torch.cuda.synchronize if gen.device.type == "cuda" else (lambda: None)   # GPU draws are asynchronous
    t = best({
        "ort": lambda: sess.run(None, {"input": rows}),
        "ideal": lambda: run_model(model, ds, repeats=R, batch_size=n, device=device),
        "ort, R=1": lambda: sess.run(None, {"input": x}),
        "ideal, R=1": lambda: run_model(model, ds, repeats=1, batch_size=n, device=device),
        "noisy": lambda: run_model(model, ds, devices=noisy_devices, repeats=R, batch_size=n),
        "floor hwloop": lambda: (physics.normal((values,), gen), sync()),
        "floor torch": lambda: (torch.randn(values, generator=gen, device=gen.device), sync()),
        "floor numpy": lambda: rng.standard_normal(values, dtype=np.float32),
    }, trials, block=1)
    print(f"{name} on {device or 'cpu'} (onnxruntime on {sess.get_providers()[0]}): {n} samples x {R} repeats = {n * R} rows, {values / n / R:,.0f} recorded values per row; "
          f"ideal vs onnxruntime max |diff| {err:.1e}")
    print(f"  {'':14s}{'seconds':>9s}{'rows/s':>11s}{'vs ort':>9s}{'vs floor':>10s}")
    for k, s in t.items():
        one = k.endswith("R=1")            # against onnxruntime on the same rows, one repetition
        rows_k, ref = (n, t["ort, R=1"]) if one else (n * R, t["ort"])
        floor = f"{t['floor hwloop'] / s:9.2f}x" if not one else f"{'':10s}"
        print(f"  {k:14s}{s:9.4f}{rows_k / s:11.0f}{ref / s:8.2f}x{floor}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--only", choices=sorted(CASES))
    ap.add_argument("--device", help="where hwloop computes: cpu (default) or cuda[:N]")
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at the start")
    tmp = Path(tempfile.mkdtemp())
    for name in [args.only] if args.only else CASES:
        bench(name, args.trials, tmp, args.device)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
