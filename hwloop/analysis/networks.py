"""Reference networks as real ONNX files: dense chains with chosen weights, for checks and reproductions.

The analytic cases of Semenova et al. (symmetric networks: all weights 1/N)
and random MLPs are built with ``onnx.helper`` (Gemm + activation per layer,
through ``exporters.handbuilt`` like every hand-built graph of the project), so
every check runs through the same import -> runner -> device path as a user's
model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from onnx import helper

from exporters.handbuilt import write_onnx

_ONNX_ACT = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "linear": None}


def dense_onnx(path: str | Path, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray] | None = None,
               activations: str | Sequence[str] = "linear") -> Path:
    """Write Gemm(transB=1) [+ activation] per layer; weights[k] is (n_out, n_in) as in ``AnalogLayer``."""
    n = len(weights)
    acts = [activations] * n if isinstance(activations, str) else list(activations)
    biases = biases if biases is not None else [np.zeros(w.shape[0], np.float32) for w in weights]
    nodes, inits, x = [], {}, "input"
    for k, (w, b, act) in enumerate(zip(weights, biases, acts)):
        inits[f"W{k}"], inits[f"b{k}"] = np.asarray(w, np.float32), np.asarray(b, np.float32)
        a = "output" if (k == n - 1 and _ONNX_ACT[act] is None) else f"a{k}"
        nodes.append(helper.make_node("Gemm", [x, f"W{k}", f"b{k}"], [a], name=f"gemm{k}", transB=1))
        x = a
        if _ONNX_ACT[act] is not None:
            y = "output" if k == n - 1 else f"h{k}"
            nodes.append(helper.make_node(_ONNX_ACT[act], [a], [y], name=f"{act}{k}"))
            x = y
    return write_onnx(path, nodes, {"input": ["batch", int(weights[0].shape[1])]},
                      {"output": ["batch", int(weights[-1].shape[0])]}, inits, name="dense_chain")


def symmetric_weights(n: int, depth: int, value: float | None = None) -> list[np.ndarray]:
    """Semenova's symmetric network: every weight equal (default 1/N), N neurons per layer."""
    v = 1.0 / n if value is None else value
    return [np.full((n, n), v, np.float32) for _ in range(depth)]


def random_weights(sizes: Sequence[int], seed: int, std: float | None = None) -> list[np.ndarray]:
    """W ~ N(0, std^2) per layer (default std 1/sqrt(n_in)); sizes = (n_in, n_1, ..., n_L)."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((o, i)) * (std if std is not None else 1 / np.sqrt(i))).astype(np.float32)
            for i, o in zip(sizes[:-1], sizes[1:])]
