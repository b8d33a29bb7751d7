"""Benchmark: analytic prediction versus the Monte-Carlo run it replaces, measured in the same run.

MLP 784-100-100-100-10 (sigmoid hidden layers, W ~ N(0, 1/n_in), fixed seed)
under the Semenova-style profile, 1,000 samples (MNIST test images when
../shared/data/mnist.npz exists, else uniform random inputs).  Monte-Carlo:
the real runner with one profiled Emulator per layer, 1,000 repetitions, run
in chunks of samples so memory stays bounded, plus the measured analysis of
each chunk.  Prints the time ratio predict / Monte-Carlo and the relative
error of the predicted per-layer mean variance.

    .venv/bin/python tools/bench_predict.py [--samples 1000] [--repeats 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hwloop.analysis import analyze_run, predict
from hwloop.analysis.networks import dense_onnx, random_weights
from hwloop.data import Dataset, load_data, shared_mnist
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import load_profile
from hwloop.runner import run_model


def inputs(n: int) -> Dataset:
    path = shared_mnist()
    if path is not None:
        return load_data(f"mnist:{path}@{n}")
    x = np.random.default_rng(0).uniform(0, 1, (n, 784)).astype(np.float32)
    return Dataset("uniform", x, np.zeros(n, np.int64), 10)


def monte_carlo_var(model, prof, data: Dataset, repeats: int, chunk: int) -> np.ndarray:
    """Per-layer mean noise variance over all samples, from chunked in-memory runs."""
    total = np.zeros(len(model.layers))
    for lo in range(0, len(data), chunk):
        part = Dataset(data.name, data.x[lo:lo + chunk], data.y[lo:lo + chunk], data.n_classes)
        devices = {k: Emulator(prof) for k in range(len(model.layers))}
        res = run_model(model, part, devices=devices, repeats=repeats, seed=lo)
        total += analyze_run(res)["var_mean"].values * len(part)
    return total / len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=50, help="samples per Monte-Carlo run (memory bound)")
    ap.add_argument("--profile", default="semenova")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        w = random_weights([784, 100, 100, 100, 10], seed=0)
        model = load_model(dense_onnx(Path(tmp) / "mlp.onnx", w, None, ["sigmoid"] * 3 + ["linear"]))
    prof = load_profile(args.profile)
    data = inputs(args.samples)

    predict(model, prof, data.x[:10])  # warm-up (imports, BLAS threads)
    t_pred, c_pred = [], []
    for _ in range(3):  # the short measurement is repeated; the best of 3 is reported
        t0, c0 = time.perf_counter(), time.process_time()
        pred = predict(model, prof, data)
        t_pred.append(time.perf_counter() - t0)
        c_pred.append(time.process_time() - c0)
    t_pred, c_pred = min(t_pred), min(c_pred)
    t32 = []
    for _ in range(3):
        t0 = time.perf_counter()
        pred32 = predict(model, prof, data, dtype="float32")
        t32.append(time.perf_counter() - t0)
    t32 = min(t32)

    t0, c0 = time.perf_counter(), time.process_time()
    mc = monte_carlo_var(model, prof, data, args.repeats, args.chunk)
    t_mc, c_mc = time.perf_counter() - t0, time.process_time() - c0

    pv = pred["var_mean"].values
    err = np.abs(pv / mc - 1)
    print(f"data: {data.name}, {len(data)} samples; profile {args.profile}; Monte-Carlo {args.repeats} repetitions")
    print(f"{'layer':>5}  {'predicted':>11}  {'Monte-Carlo':>11}  {'rel.err':>8}")
    for k in range(len(pv)):
        print(f"{k:>5}  {pv[k]:11.4e}  {mc[k]:11.4e}  {err[k]:8.2%}")
    print(f"wall: predict {t_pred:.3f} s, Monte-Carlo {t_mc:.2f} s, ratio 1/{t_mc / t_pred:.0f};  "
          f"cpu: predict {c_pred:.3f} s, Monte-Carlo {c_mc:.2f} s, ratio 1/{c_mc / c_pred:.0f};  "
          f"max relative error {err.max():.2%}  (goal: <= 1/50 at < 5%)")
    err32 = np.abs(pred32["var_mean"].values / mc - 1).max()
    print(f"float32 covariance: predict {t32:.3f} s wall, ratio 1/{t_mc / t32:.0f}, max relative error {err32:.2%}")


if __name__ == "__main__":
    main()
