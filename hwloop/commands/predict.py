"""Analytic prediction of every analog layer's noise (variance, common-mode part, SNR) without sampling.

First-order propagation of the full noise covariance through the network,
linearised at the noise-free operating point of each sample (docs/analysis.md).

Noise strength: the profile's intensities are variances D (D_A, D_M, ... in
output units^2 for additive terms), as in Semenova et al.; Walking Noise's
sigma (`hwloop walk`) is a standard deviation, sigma^2 = D.  Printed variances
are in output units^2; SNR is 10 log10(mean^2 / variance) in dB.
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
    from ..data import load_data
    from ..graph import load_model
    from ..progress import step

    from ..mitigate.multiexec import read_plan

    model, data = load_model(args.model), load_data(args.data)
    with step(f"hwloop predict: propagating the noise covariance through {len(model.layers)} analog layers "
              f"for {len(data)} samples of {data.name}"):
        ds = predict(model, args.profile, data, quantisation=not args.no_quantisation, dtype=args.dtype,
                     average=read_plan(model))   # a mitigated model's multi-execution plan (ONNX metadata)
    print(layer_table(ds))
    if ds.attrs.get("method", "exact") != "exact":
        print(f"prediction: {ds.attrs['method']}")
    if args.out:
        save_analysis(ds, args.out)
        print(f"prediction written to {args.out}")
    return 0
