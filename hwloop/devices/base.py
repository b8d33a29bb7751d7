"""The one interface every device implements: a public, versioned contract (``DEVICE_API_VERSION``).

Bring your own chip (docs/own-chip.md): subclass ``Device``, implement
``program`` and ``run``, and name the class in a bench file (``type:
module:Class`` plus keyword arguments, or a short name registered under the
entry-point group ``hwloop.devices``).  Every hwloop command that takes
``--bench`` can then use it.  Version 1 of the contract:

- ``program(layer, seed=)``: load one ``AnalogLayer`` (``weight`` (n_out,
  n_in), ``bias`` (n_out,), ``activation`` in sigmoid/tanh/relu/linear).  Raise
  ``hwloop.errors.DeviceError`` with a sentence the user can act on when the
  chip cannot take it; any other exception is reported as a failed ``program``
  naming the bench file's line.
- ``run(x, repeats=, key=)``: x is (R_in, batch, n_in) float32, R_in 1 (the
  same input evaluated ``repeats`` times, e.g. the first analog layer) or equal
  to ``repeats`` (each repetition of the previous layer evaluated once:
  repetitions are carried through the network so noise accumulates as on
  hardware).  Return (repeats, batch, n_out) float32.  ``check_input`` checks
  the shapes for you.
- optional: ``describe()`` (provenance, JSON-serialisable; say where bias and
  activation really ran in ``{"placement": {"activation": "host"|"chip",
  "scale": s}}`` when the chip does not do them itself), ``close()``,
  ``remote`` (True when the work happens outside this process, so the runner
  overlaps layers), ``hardware`` (devices sharing one unit are not run at the
  same time), ``interrupt()``, ``sibling()`` (another device on the same
  connection, for a second layer; without it one instance serves every layer
  mapped to it and is reprogrammed as the batches go through), and the static
  ``check_options(**kwargs) -> {key: problem}``, called when a bench file is
  read, so a bad argument is reported at its line before anything connects.

Randomness is keyed, never global: ``program`` gets a seed for static effects
(weight programming noise, gain/offset spread), ``run`` gets a key for that
batch (e.g. ``(seed, layer, batch)``), so a resumed run draws exactly what an
uninterrupted run would.  Physical chips ignore both.

Compatibility: additions to this contract keep ``DEVICE_API_VERSION``; a change
that breaks existing devices raises it.  A class may declare the version it
was written for in ``api_version``; newer than this hwloop is refused when the
bench file is loaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from ..layer import AnalogLayer

#: the version of the Device contract this hwloop implements (see the module docstring)
DEVICE_API_VERSION = 1


class Device(ABC):
    """Runs one programmed analog layer on batches of inputs."""

    #: the layer currently programmed, or None
    layer: AnalogLayer | None = None
    #: True when the work happens outside this process (a chip): the runner then overlaps
    #: the layers' devices across batches instead of waiting on each in turn
    remote: bool = False
    #: the contract version the class was written for
    api_version: int = 1
    #: where the device was declared (``FILE:LINE: devices: NAME``, set by the bench loader), for errors
    origin: str | None = None

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
