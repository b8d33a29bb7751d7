"""Show how hwloop maps an ONNX model: which nodes are analog layers, which are digital glue."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "list a model's analog layers, digital glue, and every product that stays digital (and why)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="ONNX model file")
    p.add_argument("--output", help="the graph output whose class scores give the accuracy (default: the first "
                                    "float (batch, classes) output)")


def main(args: argparse.Namespace) -> int:
    from ..graph import format_table, load_model

    model = load_model(args.model, output=args.output)
    print(format_table(model.table()))
    if model.digital_products:
        print("products that stay digital:")
        for p in model.digital_products:
            print(f"  {p.name} ({p.node.op_type}): {p.reason}")
    print(model.summary())
    for note in model.notes:
        print(f"note: {note}")
    n_glue = sum(1 for r in model.table() if r["kind"] == "digital")
    print(f"{args.model}: {len(model.layers)} analog layers, {n_glue} digital nodes; "
          f"input {model.input_name!r}, output {model.output_name!r} ({model.n_classes or '?'} classes)")
    return 0
