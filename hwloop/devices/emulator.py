"""The software emulator of an analog chip.

With no profile (or ``ideal.yaml``) it is exact float32 arithmetic, the
reference every other device is compared against.  Noise and
non-idealities come from a device profile through ``hwloop.physics``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..layer import AnalogLayer, activate
from .base import Device, check_input


class Emulator(Device):
    """Ideal emulator: ``act(x @ W.T + b)`` in float32, identical across repetitions."""

    def __init__(self, profile=None, name: str = "emulator"):
        self.profile = profile
        self.name = name
        self.layer = None

    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        self.layer = layer
        self._wt = np.ascontiguousarray(layer.weight.T, dtype=np.float32)
        self._b = layer.bias.astype(np.float32)

    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)
        r_in, b, n_in = x.shape
        a = x.reshape(r_in * b, n_in) @ self._wt
        a += self._b
        y = activate(self.layer.activation, a).reshape(r_in, b, -1)
        if r_in != repeats:
            y = np.broadcast_to(y, (repeats, b, y.shape[2]))
        return y

    def describe(self) -> dict:
        return {"type": "Emulator", "name": self.name, "profile": "ideal"}
