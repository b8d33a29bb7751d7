"""A run's devices: one per analog layer, each programmed with its layer and a seed derived from the run's.

Why apart from the runner: the local run, the Dask workers (``hwloop.distributed``)
and fine-tuning all need the same devices programmed the same way, and the
same noise keys (seed, layer, batch[, step]) for every layer they run.
"""

from __future__ import annotations

import copy
from typing import Mapping

import numpy as np

from . import physics
from .devices import Device, Emulator
from .errors import DeviceError, HwloopError
from .graph import Model
from .layer import AnalogLayer
from .lowering import on_device


def resolve_devices(model: Model, devices: Device | Mapping[int, Device] | None,
                    device: str | None = None) -> list[Device]:
    """One device per analog layer: None -> a fresh ideal Emulator each; one Device -> shared by all.
    ``device``: where emulators compute; a given Emulator naming no device is replaced by a copy on it.

    A device profile's per-layer overrides must name layers of this model (however the devices were made)."""
    if devices is None:
        return [Emulator(device=device) for _ in model.layers]
    if isinstance(devices, Device):
        per_layer = [devices] * len(model.layers)
    else:
        extra = sorted(set(devices) - set(range(len(model.layers))))
        if extra:
            raise HwloopError(f"devices given for layer(s) {extra}, but {model.path.name} has analog layers "
                              f"0..{len(model.layers) - 1}")
        per_layer = [devices.get(k) or Emulator(device=device) for k in range(len(model.layers))]
    if device is not None:
        per_layer = on_compute_device(per_layer, device)
    for profile in {id(p): p for p in (getattr(d, "profile", None) for d in per_layer)
                    if hasattr(p, "check_layers")}.values():
        profile.check_layers(model.layers)
    return per_layer


def on_compute_device(per_layer: list[Device], device: str) -> list[Device]:
    """Emulators naming no device replaced by copies computing on ``device`` (shared ones stay shared)."""
    moved: dict[int, Device] = {}
    for dev in per_layer:
        if isinstance(dev, Emulator) and getattr(dev, "device", None) is None and id(dev) not in moved:
            moved[id(dev)] = copy.copy(dev)
            moved[id(dev)].device = physics.compute_device(device)
    return [moved.get(id(d), d) for d in per_layer]


def derive_seed(seed: int, index: int) -> int:
    """The static seed of layer ``index`` (programming noise), from the run's seed."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint32)[0])



class ProgrammedDevices:
    """Programs each device with its layer (reprogramming a device shared between layers)."""

    def __init__(self, model: Model, per_layer: list[Device], seed: int):
        self.per_layer, self.seed = per_layer, seed
        self.loaded: dict[int, int] = {}     # id(device) -> layer index it holds
        for layer, dev in zip(model.layers, per_layer):
            self._program(dev, layer)

    def _program(self, dev: Device, layer: AnalogLayer) -> None:
        if self.loaded.get(id(dev)) != layer.index:
            try:
                dev.program(layer, seed=derive_seed(self.seed, layer.index))
            except HwloopError as e:
                if dev.origin is None:
                    raise
                kind = DeviceError if isinstance(e, DeviceError) else HwloopError
                raise kind(f"{dev.origin}: layer {layer.index} ({layer.name!r}): {e}") from None
            except Exception as e:      # a plug-in's own failure: name where it was declared
                where = dev.origin or type(dev).__name__
                raise HwloopError(f"{where}: program(layer {layer.index} {layer.name!r}) failed: "
                                  f"{type(e).__name__}: {e}") from None
            self.loaded[id(dev)] = layer.index

    def run(self, layer: AnalogLayer, x: np.ndarray, repeats: int, batch: int, step: int | None = None) -> np.ndarray:
        """Layer ``layer`` on batch ``batch`` (and time ``step`` of a recurrent layer: fresh draws per step)."""
        dev = self.per_layer[layer.index]
        self._program(dev, layer)
        key = (self.seed, layer.index, batch) + (() if step is None else (step,))
        try:
            return on_device(dev, layer, x, repeats, key=key)
        except ValueError as e:
            raise HwloopError(f"layer {layer.index} ({layer.name!r}): {e}") from None


class IdealDevices:
    """Noise-free arithmetic for the reference pass: one ideal Emulator per layer."""

    def __init__(self, model: Model, device: str | None = None):
        self.emulators = []
        for layer in model.layers:
            emu = Emulator(device=device)
            emu.program(layer)
            self.emulators.append(emu)

    def run(self, layer: AnalogLayer, x: np.ndarray, repeats: int, step: int | None = None) -> np.ndarray:
        return on_device(self.emulators[layer.index], layer, x, repeats)
