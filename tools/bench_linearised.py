"""Benchmark: the linearised prediction (models that are not dense chains) against the Monte-Carlo run
it replaces, measured in the same run.

A torch TransformerEncoder block (tokens 8, d 16), an LSTM (12 steps, hidden 16) and LeNet-5 with max
pooling under the semenova profile; Monte-Carlo: the real runner with one profiled Emulator per layer.
Prints, per model, the wall time of each, their ratio, and the largest per-layer relative difference of
the mean variance (the Monte-Carlo estimate itself has ~sqrt(2 / repeats / elements) relative error).

    .venv/bin/python tools/bench_linearised.py [--samples 40] [--repeats 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exporters.torch_onnx import export_torch
from exporters.zoo import build, no_fastpath
from hwloop.analysis.predict import predict
from hwloop.data import Dataset
from hwloop.devices.emulator import emulators
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model


def models(tmp: Path, n: int) -> dict[str, tuple[Path, np.ndarray]]:
    rng = np.random.default_rng(0)
    with no_fastpath():
        tx = export_torch(build("transformer", layers=1), tmp / "tx.onnx", torch.zeros(2, 8, 8))
    lstm = export_torch(build("sequence", cell="LSTM", hidden=16), tmp / "lstm.onnx", torch.zeros(2, 12, 6))
    lenet = export_torch(build("lenet", size=12, pool="max"), tmp / "lenet.onnx", torch.zeros(2, 1, 12, 12))
    return {"transformer block": (tx, rng.standard_normal((n, 8, 8)).astype(np.float32)),
            "LSTM, 12 steps": (lstm, rng.standard_normal((n, 12, 6)).astype(np.float32)),
            "LeNet-5, MaxPool": (lenet, rng.uniform(0, 1, (n, 1, 12, 12)).astype(np.float32))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    prof = load_profile("semenova")
    print(f"profile semenova, {args.samples} samples, Monte-Carlo {args.repeats} repetitions")
    print(f"{'model':<18} {'predict s':>9} {'MC s':>7} {'MC/predict':>10} {'max rel.diff':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, x) in models(Path(tmp), args.samples).items():
            model = load_model(path)
            t0 = time.perf_counter()
            pred = predict(model, prof, x)
            t1 = time.perf_counter()
            res = run_model(model, Dataset("b", x, np.zeros(len(x), np.int64), 2),
                            devices=emulators(prof, model.layers), repeats=args.repeats, batch_size=len(x))
            t2 = time.perf_counter()
            mc = np.array([rec.var(axis=0, ddof=1).mean() for rec in res.layers])
            diff = np.max(np.abs(pred.var_mean.values / mc - 1))
            print(f"{name:<18} {t1 - t0:9.2f} {t2 - t1:7.2f} {(t2 - t1) / (t1 - t0):9.2f}x {100 * diff:11.1f}%")


if __name__ == "__main__":
    main()
