"""``FixedWeightChip``: a chip whose weights are set in the hardware, reached over any VISA library.

Its command set (``sim/fixed_chip.yaml`` simulates it with pyvisa-sim, ``visa_library: "@sim"``):
``*IDN?``; ``SHAP?`` -> ``n_out,n_in``; ``WEIG?`` -> the fixed weights, row-major ASCII;
``INP:RANG?`` -> ``min,max``; ``INP<j> <value>`` sets input j (``OK``, or ``ERR`` when out of
range); ``FETC<i>?`` reads output i.  The chip computes only ``W x``: bias and activation are
applied on the host, and ``describe()`` says so.  A layer whose weights are not the chip's is
refused at ``program``.  Every evaluation is one noise-free reading, so repetitions are exact.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..devices.base import Device, check_input
from ..errors import DeviceError
from ..layer import AnalogLayer, activate
from .visalib import resource_manager


class FixedWeightChip(Device):
    """A fixed-weight chip behind ``resource`` (ASCII, one value per message)."""

    def __init__(self, resource: str, visa_library: str = "@py", timeout_ms: int = 2000):
        self.resource, self.visa_library = resource, visa_library
        self._rm = resource_manager(visa_library)
        try:
            self._res = self._rm.open_resource(resource, read_termination="\n", write_termination="\n",
                                               timeout=timeout_ms)
            self.idn = self._res.query("*IDN?").strip()
            n_out, n_in = (int(v) for v in self._res.query("SHAP?").split(","))
            w = np.array([float(v) for v in self._res.query("WEIG?").split(",")], np.float32)
            self.input_range = tuple(float(v) for v in self._res.query("INP:RANG?").split(","))
        except Exception as e:
            raise DeviceError(f"fixed-weight chip {resource} ({visa_library}): {e}") from None
        self.weight = w.reshape(n_out, n_in)
        self.layer = None

    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        if layer.weight.shape != self.weight.shape or not np.allclose(layer.weight, self.weight, atol=1e-6):
            raise DeviceError(f"layer {layer.name!r} ({layer.n_out}x{layer.n_in}) does not have the weights "
                              f"fixed in chip {self.idn} ({self.weight.shape[0]}x{self.weight.shape[1]}, WEIG?)")
        self.layer = layer

    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)
        lo, hi = self.input_range
        if x.size and (x.min() < lo or x.max() > hi):
            raise DeviceError(f"layer {self.layer.name!r}: inputs span [{x.min():.4g}, {x.max():.4g}], chip "
                              f"{self.idn} accepts [{lo:g}, {hi:g}] (INP:RANG?)")
        rows = x.reshape(-1, x.shape[-1])
        z = np.empty((len(rows), self.weight.shape[0]), np.float32)
        for r, row in enumerate(rows):
            for j, v in enumerate(row):
                if self._res.query(f"INP{j} {float(v):.9g}").strip() != "OK":
                    raise DeviceError(f"chip {self.idn}: INP{j} {v:.9g} refused")
            z[r] = [float(self._res.query(f"FETC{i}?")) for i in range(len(z[r]))]
        y = activate(self.layer.activation, z + self.layer.bias.astype(np.float32))
        return np.broadcast_to(y.reshape(x.shape[0], x.shape[1], -1), (repeats, x.shape[1], y.shape[-1])).copy()

    def describe(self) -> dict:
        return {"type": "FixedWeightChip", "resource": self.resource, "visa_library": self.visa_library,
                "idn": self.idn, "placement": {"bias": "host", "activation": "host", "scale": 1.0}}

    def close(self) -> None:
        self._res.close()
