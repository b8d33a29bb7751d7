"""Benchmark: noisy emulator throughput relative to clean onnxruntime on the same number of rows.

MLP 784-100-100-100-10 (sigmoid hidden layers, random weights), batch 10,000
x 10 repeats; noise after every hidden layer: uncorrelated additive and
multiplicative plus correlated multiplicative (the readout is noise-free).
Measured in the same run:
  ort      onnxruntime, the whole model on 100,000 rows (10,000 x 10)
  devices  the bare emulators chained layer by layer (R=10 carried through)
  runner   hwloop.runner.run_model(..., out=None) (adds the glue, the noise-free
           reference pass and the in-memory copy)
  naive    a plain torch forward with the noise drawn term by term
Ratios are throughput relative to ort (ort time / time); the goal is >= 0.5.

    .venv/bin/python tools/bench_emulator.py [--rows 10000] [--repeats 10] [--trials 5] [--threads N]

On a machine shared with other jobs the ratios still swing from run to run; compare several runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.models import MLP, seeded  # noqa: E402
from exporters.torch_onnx import export_torch  # noqa: E402
from hwloop.data import Dataset  # noqa: E402
from hwloop.devices import Emulator  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import parse_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402
from timing import best  # noqa: E402  (tools/timing.py: python puts the script's folder on the path)

SIZES = (784, 100, 100, 100, 10)
ACTS = ("sigmoid", "sigmoid", "sigmoid", "linear")
PROFILE = """
version: 1
provenance: {source: hand-written, notes: tools/bench_emulator.py}
noise: {D_A: 1.0e-3, D_M: 1.0e-3, D_MC: 1.0e-4, placement: post}
layers:
  3: {noise: {D_A: 0, D_M: 0, D_MC: 0}}   # the readout is noise-free: noise after every hidden layer
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for torch and onnxruntime alike (default: their defaults)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, R = args.rows, args.repeats

    with seeded(0):
        net = MLP(SIZES, ACTS).eval()
    tmp = Path(tempfile.mkdtemp())
    path = export_torch(net, tmp / "mlp.onnx", torch.zeros(2, SIZES[0]))
    model = load_model(path)
    profile = parse_profile(PROFILE, "bench-profile")
    x = np.random.default_rng(0).uniform(0, 1, (B, SIZES[0])).astype(np.float32)
    ds = Dataset("random", x, np.zeros(B, np.int64), 10)

    import onnxruntime as ort

    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x_rows = np.ascontiguousarray(np.tile(x, (R, 1)))  # the same number of rows as the emulated run
    name = sess.get_inputs()[0].name

    devices = {L.index: Emulator(profile) for L in model.layers}
    for L in model.layers:
        devices[L.index].program(L, seed=L.index)

    def chained():
        h = x[None]
        for L in model.layers:
            h = devices[L.index].run(h, repeats=R, key=(0, L.index, 0))
        return h

    def runner():
        return run_model(model, ds, devices=devices, repeats=R, seed=0, batch_size=B)

    gen = torch.Generator().manual_seed(0)
    params = [(torch.from_numpy(L.weight), torch.from_numpy(L.bias), L.activation) for L in model.layers]

    def naive():  # what a straightforward torch emulation does: every term drawn separately
        h = torch.from_numpy(x_rows)
        for k, (w, b, act) in enumerate(params):
            h = h @ w.T + b
            h = torch.sigmoid(h) if act == "sigmoid" else h
            if k < 3:
                n = h.shape[0]
                xi_a = torch.randn(h.shape, generator=gen) * 1e-3 ** 0.5
                xi_m = torch.randn(h.shape, generator=gen) * 1e-3 ** 0.5
                xi_mc = torch.randn((n, 1), generator=gen) * 1e-2
                h = h * (1 + xi_m + xi_mc) + xi_a
        return h

    t = best({"ort": lambda: sess.run(None, {name: x_rows}), "devices": chained, "runner": runner,
               "naive": naive}, args.trials)
    y = chained()
    assert y.shape == (R, B, 10) and np.isfinite(y).all()

    print(f"MLP {'-'.join(map(str, SIZES))}, {B} rows x {R} repeats = {B * R} rows; threads "
          f"{args.threads or 'default'} (torch {torch.get_num_threads()})")
    print(f"{'':10s}{'seconds':>10s}{'rows/s':>14s}{'vs ort':>9s}")
    for k in ("ort", "devices", "runner", "naive"):
        print(f"{k:10s}{t[k]:10.4f}{B * R / t[k]:14.0f}{t['ort'] / t[k]:8.2f}x")


if __name__ == "__main__":
    main()
