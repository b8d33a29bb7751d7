"""Throughput of hwloop's runner (ideal device) against onnxruntime running the whole model.

MLP 784-100-100-100-10 (random weights; sigmoid, relu, sigmoid, linear), one
batch of 10,000 random inputs.  Both sides are measured in this same process,
taking turns, best of several repetitions, and reported as samples/s and as a
ratio (hwloop / onnxruntime; the goal is at least 0.8).

    .venv/bin/python tools/bench_runner.py [--samples 10000] [--reps 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hwloop.analysis.networks import dense_onnx, random_weights
from hwloop.data import Dataset
from hwloop.graph import load_model
from hwloop.runner import run_model
from timing import best  # tools/timing.py (python puts the script's folder on the path)

SIZES = (784, 100, 100, 100, 10)
ACTS = ("sigmoid", "relu", "sigmoid", "linear")


def build_mlp(path: Path, seed: int = 0) -> Path:
    """The benchmark MLP as Gemm (transB=1) + activation nodes, the way torch exports Linear layers."""
    rng = np.random.default_rng(seed + 1)
    biases = [0.1 * rng.standard_normal(n) for n in SIZES[1:]]
    return dense_onnx(path, random_weights(SIZES, seed), biases, ACTS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    n = args.samples
    with tempfile.TemporaryDirectory() as tmp:
        path = build_mlp(Path(tmp) / "mlp.onnx")
        rng = np.random.default_rng(1)
        ds = Dataset("random", rng.random((n, SIZES[0]), dtype=np.float32), rng.integers(0, 10, n), 10)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        model = load_model(path)

        store = Path(tmp) / "run.zarr"
        ort_run = lambda: sess.run(["output"], {"input": ds.x})  # noqa: E731
        # Two separate contests: the store's disk writes would otherwise slow the in-memory turns after them.
        t = best({"ort": ort_run, "mem": lambda: run_model(model, ds, batch_size=n)}, args.reps)
        t_ort, t_mem = t["ort"], t["mem"]
        t = best({"ort": ort_run, "store": lambda: run_model(model, ds, batch_size=n, out=store, overwrite=True)},
                 args.reps)
        t_ort_store, t_store = t["ort"], t["store"]

        res = run_model(model, ds, batch_size=n)
        diff = float(np.abs(res.output[0] - sess.run(["output"], {"input": ds.x})[0]).max())
    print(f"MLP {'-'.join(map(str, SIZES))}, batch {n}, ideal emulator, best of {args.reps}")
    print(f"  onnxruntime (whole model)   {n / t_ort:12,.0f} samples/s   {t_ort * 1e3:8.1f} ms")
    print(f"  hwloop in memory            {n / t_mem:12,.0f} samples/s   {t_mem * 1e3:8.1f} ms   ratio {t_ort / t_mem:.2f}x")
    print(f"  hwloop with a run store     {n / t_store:12,.0f} samples/s   {t_store * 1e3:8.1f} ms   ratio {t_ort_store / t_store:.2f}x")
    print(f"  max |hwloop - onnxruntime| = {diff:.2e}")


if __name__ == "__main__":
    main()
