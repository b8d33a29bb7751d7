"""Fine-tune a model's analog layers so it performs well on its chip (hardware-in-the-loop training).

The forward pass runs on the devices of --bench (chips over VISA or
emulators, as in run), the chip's outputs, noise included, carried to the
next layer; the backward pass goes through the twin's differentiable model of
each layer (--twin: a device profile, or a bench file of profiles; per-neuron
gains and offsets from its provenance.per_neuron) at the chip's operating
point, and through the digital glue.  --mode twin trains through the twin alone
(noise-aware training, no chip in the loop); --mode ideal trains through the
noise-free model (no adaptation, a control).

A checkpoint (--checkpoint, default OUT.ckpt.npz) is written after every
step; --resume continues from it.  The result is OUT (the same ONNX graph
with new weights) and a report (OUT.report.json, and as text in
OUT.report.txt and on the terminal).

Example:
    hwloop finetune demo.onnx --bench bench.yaml --twin twin.yaml --data digits+train --val digits --out tuned.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fine-tune a model on its chip: forward on the devices, backward through the twin"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="ONNX model file")
    p.add_argument("--out", type=Path, required=True, help="tuned ONNX model to write")
    p.add_argument("--bench", type=Path, help="bench file mapping layers to chips and emulators (needed for hil)")
    p.add_argument("--twin", help="twin: a device profile (YAML path or name) or a bench file of profiles "
                                  "(default: the ideal model)")
    p.add_argument("--mode", choices=("hil", "twin", "ideal"), default="hil", help="default: hil")
    p.add_argument("--data", default="digits+train", help="training data spec (default: digits+train)")
    p.add_argument("--val", help="data spec for the before/after accuracies (default: the training data)")
    p.add_argument("--layers", help="analog layers to train, comma-separated indices (default: all)")
    p.add_argument("--epochs", type=int, default=5, help="default: 5")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over all steps (default: cosine)")
    p.add_argument("--batch-size", type=int, default=64, help="default: 64")
    p.add_argument("--clamp", help="clamp weights after each step: 'chip' (each device's weight and bias ranges) "
                                   "or a number (|w| <= it)")
    p.add_argument("--reg", type=float, default=0.0, help="weight of sum (w - w_original)^2 in the loss (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of batch order and noise (default: 0)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default: OUT.ckpt.npz)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--report", type=Path, help="JSON report (default: OUT.report.json)")


def main(args: argparse.Namespace) -> int:
    from ..errors import HwloopError
    from ..finetune import FinetuneConfig, finetune, format_report
    from ..graph import load_model

    model = load_model(args.model)
    try:
        layers = None if args.layers is None else tuple(int(v) for v in args.layers.split(","))
        clamp = args.clamp if args.clamp in (None, "chip") else float(args.clamp)
    except ValueError as e:
        raise HwloopError(f"--layers or --clamp: {e}") from None
    config = FinetuneConfig(mode=args.mode, epochs=args.epochs, lr=args.lr, schedule=args.schedule,
                            batch_size=args.batch_size, layers=layers, clamp=clamp, reg=args.reg, seed=args.seed)
    devices = None
    if args.bench:
        from ..bench import load_bench

        devices = load_bench(args.bench).devices(model)
    try:
        result = finetune(model, args.data, val=args.val, devices=devices, twin=args.twin, config=config,
                          out=args.out, checkpoint_path=args.checkpoint, resume=args.resume, progress=True,
                          report_path=args.report or Path(f"{args.out}.report.json"))
    finally:
        for dev in ({id(d): d for d in devices.values()}.values() if devices else []):
            dev.close()
    text = format_report(result.report)
    from ..files import atomic_path

    with atomic_path(f"{args.out}.report.txt") as tmp:
        tmp.write_text(text + "\n")
    print(text)
    return 0
