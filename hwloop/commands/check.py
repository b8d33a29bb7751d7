"""CI gate: run MODEL under a device profile (or on a device of --bench) and exit 0 when the mean accuracy reaches --min-accuracy, 1 when not.

Prints the mean and spread of accuracy over the repetitions and the noisiest
layer (lowest median SNR against the noise-free output); --junit writes a
JUnit XML report for CI systems.
"""

from __future__ import annotations

import argparse

HELP = "CI gate: does the model keep --min-accuracy under a device profile? (exit 0 yes, 1 no)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--profile", help="profile file or bare name (e.g. semenova)")
    src.add_argument("--bench", help="bench file (YAML): run every layer on one of its devices (see --device)")
    p.add_argument("--device", help="the device name in --bench (default: its only device)")
    p.add_argument("--data", default="digits", help="data spec (default: digits)")
    p.add_argument("--repeats", type=int, default=10, help="repetitions (default: 10)")
    p.add_argument("--min-accuracy", type=float, required=True, help="required mean accuracy in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--junit", metavar="OUT.xml", help="also write a JUnit XML report")


def main(args: argparse.Namespace) -> int:
    from ..check import check_model

    devices, label = None, None
    if args.bench:
        from ..bench import layer_devices, load_bench
        from ..graph import load_model

        args.model = load_model(args.model)
        label = f"{args.bench}:{args.device or load_bench(args.bench).only_device()}"
        devices = layer_devices(args.model, args.bench, args.device)
    try:
        result = check_model(args.model, profile=args.profile, data=args.data, repeats=args.repeats,
                             min_accuracy=args.min_accuracy, seed=args.seed, batch_size=args.batch_size,
                             devices=devices, devices_label=label or "bench")
    finally:
        for d in {id(d): d for d in (devices or {}).values()}.values():
            d.close()
    print(result.summary())
    if args.junit:
        result.write_junit(args.junit)
    return 0 if result.passed else 1
