"""Bring your own chip: a vendor SDK behind hwloop's ``Device`` contract (docs/own-chip.md).

Use it from a bench file, with no change to hwloop::

    devices:
      optical: {type: examples.own_chip:OpticalChip, serial: OC-7, noise: 0.01}
    default: optical
"""

import numpy as np

from hwloop.devices import Device
from hwloop.devices.base import check_input
from hwloop.errors import DeviceError

from examples.vendor_sdk import FUNCTIONS, OpticalBoard


class OpticalChip(Device):
    """One analog layer on an optical board, reached through the vendor's SDK."""

    def __init__(self, serial: str = "OC-1", noise: float = 0.01):
        self.board = OpticalBoard(serial, noise)

    def program(self, layer, *, seed: int = 0) -> None:
        if layer.activation not in FUNCTIONS:
            raise DeviceError(f"the optical board cannot do {layer.activation!r}")
        self.board.upload(layer.weight, layer.bias, layer.activation)
        self.layer = layer

    def run(self, x: np.ndarray, *, repeats: int, key=()) -> np.ndarray:
        x = check_input(self, x, repeats)                   # (R_in, batch, n_in), float32
        x = np.broadcast_to(x, (repeats, *x.shape[1:]))     # R_in is 1 or repeats
        seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
        return self.board.fire(x, seed).astype(np.float32)  # (repeats, batch, n_out)

    def describe(self) -> dict:
        return {"type": "OpticalChip", "serial": self.board.serial, "noise": self.board.noise}

    def close(self) -> None:
        self.board.close()
