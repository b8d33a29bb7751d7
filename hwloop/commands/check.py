"""CI gate: run MODEL under a device profile and exit 0 when the mean accuracy reaches --min-accuracy, 1 when not.

Prints the mean and spread of accuracy over the repetitions and the noisiest
layer (lowest median SNR against the noise-free output); --junit writes a
JUnit XML report for CI systems.
"""

from __future__ import annotations

import argparse

HELP = "CI gate: does the model keep --min-accuracy under a device profile? (exit 0 yes, 1 no)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--profile", required=True, help="profile file or bare name (e.g. semenova)")
    p.add_argument("--data", default="digits", help="data spec (default: digits)")
    p.add_argument("--repeats", type=int, default=10, help="repetitions (default: 10)")
    p.add_argument("--min-accuracy", type=float, required=True, help="required mean accuracy in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--junit", metavar="OUT.xml", help="also write a JUnit XML report")


def main(args: argparse.Namespace) -> int:
    from ..graph import load_model
    from ..profiles import load_profile
    from ..progress import step

    model, profile = load_model(args.model), load_profile(args.profile)   # bad input: one line, before any wait
    with step(f"hwloop check: running {args.model} under profile {profile.name} ({args.repeats} repeats)"):
        from ..check import check_model

        result = check_model(model, profile=profile, data=args.data, repeats=args.repeats,
                             min_accuracy=args.min_accuracy, seed=args.seed, batch_size=args.batch_size)
    print(result.summary())
    if args.junit:
        result.write_junit(args.junit)
    return 0 if result.passed else 1
