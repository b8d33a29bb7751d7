"""Mitigate noise: transform a model so a noisy chip hurts it less, predict the gain, prove it on a run.

Strategies (combine by repeating --strategy):

  ghost[:G]              G ghost neurons per hidden layer against correlated noise
  duplicate[:K]          every hidden neuron K times, averaged by the next layer
  multi-exec[:B[:SCHEME]]  B executions in all, allocated to layers by a planner scheme
  slope[:GAIN]           rescale linear/relu layers whose gain is >= 1 down to GAIN
  append @L,L to choose layers, e.g. duplicate:3@0,1

--out writes the mitigated ONNX model (same noise-free function, checked
with onnxruntime; multi-exec travels as model metadata).  --advise ranks
every strategy and combination at --budget (a MAC ratio) analytically.
--prove runs the original model, each strategy alone and (when several are
given) their combination on the emulator with --profile and prints measured
against predicted, layer by layer; --out then holds the combination.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "transform a model against noise (ghost neurons, duplication, multi-execution, slope), advise, prove"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="ONNX model")
    p.add_argument("--profile", required=True, help="device profile (YAML path or name, e.g. semenova)")
    p.add_argument("--data", default="digits", help="data spec for operating points, allocation and the proof "
                                                     "(default: digits)")
    p.add_argument("--strategy", action="append", default=[], metavar="SPEC",
                   help="NAME[:ARG[:SCHEME]][@LAYERS]; repeat to combine")
    p.add_argument("--out", type=Path, help="write the mitigated model here (.onnx)")
    p.add_argument("--advise", action="store_true", help="rank every strategy and combination (no sampling)")
    p.add_argument("--budget", type=float, default=2.0, help="chip cost allowed, as a MAC ratio (default: 2)")
    p.add_argument("--advise-samples", type=int, default=256,
                   help="samples the advisor looks at, evenly spaced through --data (default: 256; 0: all)")
    p.add_argument("--prove", action="store_true", help="run original and mitigated model and compare")
    p.add_argument("--repeats", type=int, default=20, help="repetitions per sample for --prove (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the proof's runs (default: 0)")


def main(args: argparse.Namespace) -> int:
    from ..errors import HwloopError
    from ..graph import load_model
    from ..mitigate.plan import parse_strategy

    strategies = [parse_strategy(s) for s in args.strategy]
    if not (args.advise or strategies):
        raise HwloopError("give --advise, or at least one --strategy")
    if (args.out or args.prove) and not strategies:
        raise HwloopError("--out and --prove need at least one --strategy")
    if args.out is not None and args.out.suffix != ".onnx":
        raise HwloopError(f"{args.out}: the mitigated model is written as ONNX; name it *.onnx")
    if args.repeats < 2:
        raise HwloopError(f"--repeats {args.repeats}: the proof needs at least 2 repetitions")
    model = load_model(args.model)
    if args.advise:
        from ..mitigate.advise import advise, format_advice

        print(format_advice(advise(model, args.profile, args.data, args.budget, args.advise_samples or None)))
    if args.prove:
        from ..mitigate.prove import format_proof, prove_each

        variants = [[s] for s in strategies] + ([strategies] if len(strategies) > 1 else [])
        original, sides = prove_each(args.model, args.profile, args.data, variants, repeats=args.repeats,
                                     seed=args.seed, out=args.out)
        print("\n".join(sides[-1].plan.notes))
        for side in sides:
            print("\n" + format_proof(original, side))
    elif strategies and args.out is not None:
        from ..mitigate import api

        plan, diff = api.mitigate(model, args.profile, args.data, strategies, args.out)
        print("\n".join(plan.notes))
        print("cost: " + ", ".join(f"{k} {v:.4g}" for k, v in plan.cost().items()))
        print(f"noise-free outputs unchanged (largest relative difference {diff:.2g}); written to {args.out}")
    elif strategies:
        raise HwloopError("--strategy without --out, --prove or --advise does nothing: give --out FILE.onnx")
    return 0
