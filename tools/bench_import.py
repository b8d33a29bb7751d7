"""Grouped convolutions as per-group products, and import time, measured in one run.

1. mobilenet_v2-style blocks (depthwise 3x3 convs, exported by torch): the
   weights programmed on devices when each depthwise conv is one product per
   group (now) against the dense block-diagonal matrix it used to be (before),
   and the ideal-device throughput of both against onnxruntime running the whole
   model, taking turns in this process (samples/s and ratios).
2. Import (``load_model``) of an 80-layer model (Gemm + Relu, then a host op:
   80 glue segments, each with its onnxruntime session), best of 3, against
   the 2 s goal.

    .venv/bin/python tools/bench_import.py [--samples 256] [--size 32] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exporters.torch_onnx import export_torch  # noqa: E402
from exporters.zoo import build  # noqa: E402
from hwloop.data import Dataset  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.runner import run_model  # noqa: E402
from timing import best  # noqa: E402  (tools/timing.py)

BLOCKS = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 2))


def deep_mlp(path: Path, layers: int = 80, width: int = 64) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((width, width)) / 8).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [f"a{i}"], transB=1, name=f"fc{i}")]
        out = "output" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),   # absorbed
                  helper.make_node("Softsign", [f"r{i}"], [out], name=f"glue{i}")]   # a host segment per layer
        x = out
    graph = helper.make_graph(nodes, "deep", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_torch(build("mobilenet", blocks=BLOCKS), Path(tmp) / "mb.onnx", torch.zeros(2, 3, args.size, args.size))
        model = load_model(path)
        dense = replace(model, layers=[replace(L, weight=L.dense_weight()) for L in model.layers])
        dense.steps = [dense.layers[s.index] if hasattr(s, "weight") else s for s in model.steps]
        now = sum(L.weight.size for L in model.layers)
        before = sum(L.weight.size for L in dense.layers)
        print(f"mobilenet_v2-style blocks {BLOCKS} on 3x{args.size}x{args.size}: {len(model.layers)} analog layers, "
              f"{sum(L.groups > 1 for L in model.layers)} depthwise")
        print(f"programmed weights: per-group {now:,}  dense block-diagonal (before) {before:,}  "
              f"ratio {before / now:.1f}x")
        x = np.random.default_rng(0).standard_normal((args.samples, 3, args.size, args.size)).astype(np.float32)
        ds = Dataset("random", x, np.zeros(args.samples, np.int64), 10)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        t = best({"onnxruntime": lambda: sess.run(None, {"input": x}),
                  "hwloop per-group": lambda: run_model(model, ds, batch_size=args.samples),
                  "hwloop dense (before)": lambda: run_model(dense, ds, batch_size=args.samples)}, args.reps, block=1)
        for name, sec in t.items():
            print(f"{name:>22}: {args.samples / sec:10.0f} samples/s  ({sec / t['onnxruntime']:.2f}x onnxruntime's time)")
        deep = deep_mlp(Path(tmp) / "deep.onnx")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            load_model(deep)
            times.append(time.perf_counter() - t0)
        print(f"import of an 80-layer model: {min(times):.2f} s (goal < 2 s)")


if __name__ == "__main__":
    main()
