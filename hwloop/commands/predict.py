"""Analytic prediction of every analog layer's noise (variance, common-mode part, SNR) without sampling.

First-order propagation of the full noise covariance through the network,
linearised at the noise-free operating point of each sample (docs/analysis.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "predict per-layer noise of a model under a device profile, without Monte-Carlo"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="ONNX model")
    p.add_argument("--profile", required=True, help="device profile (YAML path or name, e.g. semenova)")
    p.add_argument("--data", default="digits", help="data spec (default: digits)")
    p.add_argument("--out", type=Path, help="write the prediction as NetCDF here")
    p.add_argument("--no-quantisation", action="store_true",
                   help="leave out the ADC quantisation variance step^2/12")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the covariance propagation (float32: faster, ~1e-6 relative)")


def main(args: argparse.Namespace) -> int:
    from ..analysis.measured import layer_table, save_analysis
    from ..analysis.predict import predict
    from ..graph import load_model

    from ..mitigate.multiexec import read_plan

    model = load_model(args.model)
    ds = predict(model, args.profile, args.data, quantisation=not args.no_quantisation, dtype=args.dtype,
                 average=read_plan(model))   # a mitigated model's multi-execution plan (ONNX metadata)
    print(layer_table(ds))
    if args.out:
        save_analysis(ds, args.out)
        print(f"prediction written to {args.out}")
    return 0
