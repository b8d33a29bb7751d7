"""A stand-in for a lab's vendor SDK (what ``own_chip.py`` wraps): an optical chip with its own API.

It is not part of hwloop and knows nothing of it: a real SDK would talk to
hardware.  This one computes ``act(W x + b)`` in float64 with Gaussian
detector noise of standard deviation ``noise`` per output, drawn from the
seed the caller passes (a physical chip would ignore it).
"""

from __future__ import annotations

import numpy as np

FUNCTIONS = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh,
             "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z}


class OpticalBoard:
    """One board: ``upload`` a matrix, ``fire`` a stack of input vectors."""

    def __init__(self, serial: str, noise: float):
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.serial, self.noise, self.matrix = serial, noise, None

    def upload(self, matrix: np.ndarray, offsets: np.ndarray, function: str) -> None:
        if function not in FUNCTIONS:
            raise ValueError(f"the board has no {function!r} response")
        self.matrix, self.offsets, self.function = np.asarray(matrix, float), np.asarray(offsets, float), function

    def fire(self, vectors: np.ndarray, seed: int) -> np.ndarray:
        z = vectors @ self.matrix.T + self.offsets
        y = FUNCTIONS[self.function](z)
        return y + np.random.default_rng(seed).normal(0.0, self.noise, y.shape)

    def close(self) -> None:
        self.matrix = None
