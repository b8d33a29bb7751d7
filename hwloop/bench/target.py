"""A bench-file device as a target of ``hwloop check`` (the ``hwloop.check.model.Target`` hook).

Every analog layer runs on the one device named (``--bench B [--device N]``),
opened once and reused by the gate's looks, closed by ``close()``.  Results on
hardware are not cached (a chip is not a pure function of its description).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..devices.base import Device
from .benchfile import load_bench


class BenchTarget:
    """``name``, ``sha256`` and ``devices(model)``, as ``hwloop.check`` expects of a target."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.bench = load_bench(path)
        self.device = device or self.bench.only_device()
        if self.device not in self.bench.devices_spec:
            self.bench.open(self.device)           # raises: no such device, naming the file
        self.name = f"{path}:{self.device}"
        self.sha256 = hashlib.sha256(Path(path).read_bytes() + self.device.encode()).hexdigest()
        self._made: dict[int, dict[int, Device]] = {}

    def devices(self, model) -> dict[int, Device]:
        if id(model) not in self._made:
            self._made[id(model)] = self.bench.devices(model, only=self.device)
        return self._made[id(model)]

    def close(self) -> None:
        for devs in self._made.values():
            for d in {id(d): d for d in devs.values()}.values():
                d.close()
        self._made.clear()
