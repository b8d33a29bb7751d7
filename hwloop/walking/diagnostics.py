"""Learning-dynamics diagnostics of Walking Noise: weight growth and self-binarisation.

Training with additive noise grows the weights before the noisy site (a larger
signal for the same noise); multiplicative noise can push activations to the
extremes of their range.  Both are measured here as plain numbers per layer/site.
"""

from __future__ import annotations

import numpy as np
from torch import nn


def weight_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weighted product layers (Linear, Conv) in definition order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def weight_magnitude(net: nn.Module) -> np.ndarray:
    """Mean |W| of every product layer (``weight_layers`` order)."""
    return np.array([float(m.weight.detach().abs().mean()) for _, m in weight_layers(net)])


def binarization(acts: np.ndarray, edge: float = 0.05) -> float:
    """Fraction of activations within ``edge`` of either end of their range (per neuron:
    min..max over the samples); 1.0 means fully binary.  Neurons that never vary are left out."""
    a = acts.reshape(len(acts), -1).astype(np.float64)
    lo, hi = a.min(axis=0), a.max(axis=0)
    span = hi - lo
    live = span > 1e-12 * np.maximum(1.0, np.abs(hi))
    if not live.any():
        return float("nan")
    u = (a[:, live] - lo[live]) / span[live]
    return float(np.mean((u <= edge) | (u >= 1 - edge)))
