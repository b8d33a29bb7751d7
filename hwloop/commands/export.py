"""Write an ONNX model: the trained demo MLP, or a random-initialised torch model (MLP, TFC, CNN, LeNet-5).

  hwloop export demo --out demo.onnx [--seed S] [--relu]
  hwloop export torch-mlp --sizes 784,100,100,100,10 --activations relu --out mlp.onnx [--dynamo]
  hwloop export tfc|cnn|lenet5 [--batchnorm] --out model.onnx [--dynamo]

Untrained models are for inspecting, benchmarking and plumbing; train your
own for meaningful accuracy (``exporters.train_torch``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import HwloopError

HELP = "write an ONNX model (the trained demo, or a random-initialised torch MLP/TFC/CNN/LeNet-5)"

MODELS = ("demo", "torch-mlp", "tfc", "cnn", "lenet5")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=MODELS, help="which model to write")
    p.add_argument("--out", required=True, type=Path, help="output .onnx file")
    p.add_argument("--seed", type=int, default=0, help="initialisation (and, for demo, training) seed")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--dynamo", action="store_true", help="use torch's dynamo exporter (default: legacy TorchScript)")
    p.add_argument("--relu", action="store_true", help="demo: ReLU hidden layers instead of sigmoid/tanh")
    p.add_argument("--sizes", default="64,32,16,10", help="torch-mlp: layer widths, comma-separated")
    p.add_argument("--activations", default="relu",
                   help="torch-mlp: one activation for every hidden layer, or one per layer, comma-separated "
                        "(sigmoid, tanh, relu, linear); the readout is linear unless given")
    p.add_argument("--batchnorm", action="store_true", help="tfc, cnn, lenet5: with BatchNorm")
    p.add_argument("--input", default="1x8x8", help="cnn: input shape CxHxW (1x8x8 digits, 1x28x28 MNIST)")


def main(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise HwloopError(f"{args.out}: already exists (pass --overwrite to replace it)")
    if args.model == "demo":
        from ..progress import step

        with step("hwloop export: training the demo MLP on the digits and exporting it to ONNX"):
            from exporters.demo import train_demo

            train_demo(args.out, seed=args.seed, relu=args.relu)
        print(f"wrote {args.out} (demo)")
        return 0
    from exporters.torch_onnx import export_torch

    model, example = build(args)
    export_torch(model, args.out, example, dynamo=args.dynamo)
    print(f"wrote {args.out} ({args.model}, {'dynamo' if args.dynamo else 'legacy'} exporter)")
    return 0


def build(args: argparse.Namespace):
    """The random-initialised torch model that ``args`` names, and an example input for it."""
    import torch

    from exporters.models import CNN, MLP, TFC, LeNet5, seeded

    with seeded(args.seed):
        if args.model == "torch-mlp":
            sizes = _ints(args.sizes, "--sizes")
            acts = [a.strip() for a in args.activations.split(",")]
            n = len(sizes) - 1
            if len(acts) == 1:
                acts = acts * (n - 1) + ["linear"]
            elif len(acts) == n - 1:
                acts = acts + ["linear"]
            if len(acts) != n:
                raise HwloopError(f"--activations {args.activations!r}: {n} layers need 1, {n - 1} or {n} activations")
            try:
                return MLP(sizes, acts), torch.zeros(2, sizes[0])
            except ValueError as e:
                raise HwloopError(f"--activations {args.activations!r}: {e}") from None
        if args.model == "tfc":
            return TFC(batchnorm=args.batchnorm), torch.zeros(2, 784)
        if args.model == "lenet5":
            return LeNet5(batchnorm=args.batchnorm), torch.zeros(2, 1, 28, 28)
        shape = _ints(args.input.replace("x", ","), "--input")
        if len(shape) != 3:
            raise HwloopError(f"--input {args.input!r}: expected CxHxW, e.g. 1x28x28")
        return CNN(shape, batchnorm=args.batchnorm), torch.zeros(2, *shape)


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise HwloopError(f"{option} {text!r}: expected comma-separated integers") from None
    if len(values) < 2 or min(values) < 1:
        raise HwloopError(f"{option} {text!r}: expected at least two positive integers")
    return values
