"""Deterministic torch training on an ``hwloop.data.Dataset``: Adam, cross-entropy, cosine schedule.

Randomness (batch order) comes only from ``seed`` through a local
``torch.Generator``; initial weights come from the caller (see
``exporters.models.seeded``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from hwloop.data import Dataset


def train_torch(model: nn.Module, dataset: Dataset, epochs: int, lr: float = 1e-3, seed: int = 0, *,
                batch_size: int = 128, input_shape: Sequence[int] | None = None,
                cosine: bool = True) -> nn.Module:
    """Train ``model`` in place on ``dataset`` and return it in eval mode.

    ``input_shape`` reshapes each flat sample (e.g. ``(1, 8, 8)`` for a CNN).
    The cosine schedule and Adam follow the Walking Noise paper's recipe.
    """
    x = torch.from_numpy(dataset.x)
    if input_shape is not None:
        x = x.reshape(len(x), *input_shape)
    y = torch.from_numpy(dataset.y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch) if cosine else None
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.eval()


def accuracy(model: nn.Module, dataset: Dataset, input_shape: Sequence[int] | None = None) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly."""
    x = torch.from_numpy(dataset.x)
    if input_shape is not None:
        x = x.reshape(len(x), *input_shape)
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(dim=1).numpy()
    return float(np.mean(pred == dataset.y))
