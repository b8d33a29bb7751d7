"""The demo model: a small MLP trained in seconds on scikit-learn's 8x8 digits, exported to ONNX.

It is produced by ``hwloop export demo`` (never committed as a blob).  The
hidden layers use sigmoid and tanh, whose slopes below 1 make the noise
analysis interesting; ``relu=True`` gives the ReLU variant.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hwloop.data import load_data

from .models import MLP, seeded
from .torch_onnx import export_torch
from .training import accuracy, train_torch

DEMO_SIZES = (64, 32, 16, 10)
DEMO_ACTIVATIONS = ("sigmoid", "tanh", "linear")


def demo_model(seed: int = 0, relu: bool = False) -> MLP:
    """The untrained demo MLP, initialised from ``seed``."""
    acts = ("relu", "relu", "linear") if relu else DEMO_ACTIVATIONS
    with seeded(seed):
        return MLP(DEMO_SIZES, acts)


def train_demo(out_path: str | os.PathLike, seed: int = 0, *, relu: bool = False,
               epochs: int = 60, verbose: bool = True) -> tuple[Path, float]:
    """Train the demo MLP on ``digits+train``, export it (legacy exporter); returns (path, test accuracy)."""
    # One thread: the same seed gives the same bytes whatever the machine's core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_torch(demo_model(seed, relu), load_data("digits+train"), epochs=epochs,
                            lr=1e-2, seed=seed, batch_size=64)
    finally:
        torch.set_num_threads(threads)
    acc = accuracy(model, load_data("digits"))
    path = export_torch(model, out_path, torch.zeros(2, DEMO_SIZES[0]), dynamo=False)
    if verbose:
        print(f"demo model {'-'.join(map(str, DEMO_SIZES))} trained (seed {seed}): "
              f"digits test accuracy {acc:.3f}; wrote {path}")
    return path, acc
