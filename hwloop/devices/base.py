"""The one interface every device implements.

A device is programmed with one layer (``program``), then fed many batches
(``run``).  ``run`` takes inputs shaped (R_in, batch, n_in) and returns
(repeats, batch, n_out) float32, where R_in is 1 (the same input evaluated
``repeats`` times, e.g. the first analog layer) or equal to ``repeats`` (each
repetition of the previous layer evaluated once: repetitions are carried
through the network so noise accumulates as on hardware).

Randomness is keyed, never global: ``program`` gets a seed for static effects
(weight programming noise, gain/offset spread), ``run`` gets a key for that
batch (e.g. ``(seed, layer, batch)``), so a resumed run draws exactly what an
uninterrupted run would.  Physical chips ignore both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ..layer import AnalogLayer


class Device(ABC):
    """Runs one programmed analog layer on batches of inputs."""

    #: the layer currently programmed, or None
    layer: AnalogLayer | None = None
    #: True when the work happens outside this process (a chip): the runner then overlaps
    #: the layers' devices across batches instead of waiting on each in turn
    remote: bool = False

    @property
    def hardware(self) -> object:
        """The unit that does the work; devices sharing one cannot run at the same time."""
        return self

    @abstractmethod
    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        """Load ``layer`` (weights, bias, activation) into the device; static errors are drawn here."""

    @abstractmethod
    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        """Evaluate the programmed layer: x (R_in, B, n_in) -> (repeats, B, n_out) float32."""

    def interrupt(self) -> None:
        """Ctrl-C while ``run`` works in another thread (a pipelined run): end it after the
        transfer in flight, raising KeyboardInterrupt there.  By default a run finishes first."""

    def describe(self) -> dict:
        """Provenance: what this device is and how it is set up (JSON-serialisable)."""
        return {"type": type(self).__name__}

    def close(self) -> None:
        """Release the hardware or connection; the default has nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_input(device: Device, x: np.ndarray, repeats: int) -> np.ndarray:
    """Validate the (R_in, B, n_in) contract shared by every device; returns float32 x."""
    if device.layer is None:
        raise RuntimeError(f"{type(device).__name__}: run() before program()")
    if x.ndim != 3:
        raise ValueError(f"inputs must be (repeat, batch, n_in), got shape {x.shape}")
    if x.shape[2] != device.layer.n_in:
        raise ValueError(f"layer {device.layer.name!r} takes {device.layer.n_in} inputs, got {x.shape[2]}")
    if x.shape[0] not in (1, repeats):
        raise ValueError(f"inputs carry {x.shape[0]} repetitions, expected 1 or {repeats}")
    return np.ascontiguousarray(x, dtype=np.float32)
