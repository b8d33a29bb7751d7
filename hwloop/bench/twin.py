"""The twin of a chip runs a layer the way the chip really does: same plan, the chip's physics from a profile.

A calibrated profile describes the chip at its own scale.  When the driver
scales a layer into the chip's ranges (``hwloop.bench.plan``), the chip's noise
and ADC step are multiplied by the scale on the host, and a saturating
activation may run on the host after the chip's noise.  ``PlannedTwin``
follows the same plan (tiles, weight scale, input scale per measurement,
placement of bias and activation) with an ``Emulator`` in the chip's place,
so twin and chip can be compared (``hwloop validate``) without pretending the
layer ran in one piece.  ``twin_of`` picks it for devices that have a plan
and the plain emulator for the others.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..devices.base import Device, check_input
from ..devices.emulator import Emulator
from ..layer import AnalogLayer
from ..profiles import Profile
from .plan import RunTarget, plan_layer, run_planned


class PlannedTwin(Device):
    """``Emulator(profile)`` in the place of a chip with ``limits``, following the driver's plan."""

    def __init__(self, profile: Profile | None, limits: dict, *, scale_weights: bool = True,
                 scale_inputs: bool = True, host_activation: bool = False, max_block_bytes: int = 32 << 20,
                 name: str = "twin"):
        self.profile, self.limits, self.name = _with_chip_adc(profile, limits), limits, name
        self.scale_weights, self.scale_inputs, self.host_activation = scale_weights, scale_inputs, host_activation
        self.max_block_bytes = max_block_bytes
        self.layer = self.plan = None
        self._emus: dict[tuple[int, float], Emulator] = {}

    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        self.plan = plan_layer(layer, self.limits, scale=self.scale_weights, host_activation=self.host_activation,
                               chip="the chip")
        self.layer, self._seed, self._emus = layer, seed, {}

    def _emulator(self, tile: int, s_x: float) -> Emulator:
        """The emulator holding tile ``tile`` with its bias divided by ``s_x`` (as the driver sends it)."""
        if (tile, s_x) not in self._emus:
            tp = self.plan.tiles[tile]
            sub = replace(self.layer, weight=tp.weights, bias=tp.bias / np.float32(s_x), activation=tp.activation)
            emu = Emulator(self.profile, name=self.name)
            emu.program(sub, seed=int(np.random.SeedSequence([self._seed, tile]).generate_state(1)[0]))
            self._emus[(tile, s_x)] = emu
        return self._emus[(tile, s_x)]

    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        x = check_input(self, x, repeats)

        def measure(t: int, c: int, xs: np.ndarray, s_x: float, k: int) -> np.ndarray:
            emu = self._emulator(t, 1.0 if self.plan.host else s_x)
            return emu.run(xs[None], repeats=k, key=(*key, t, c))

        return run_planned(self.plan, self.layer, x, repeats, measure,
                           RunTarget(self.limits, self.scale_inputs, self.max_block_bytes))

    def describe(self) -> dict:
        d = {"type": "PlannedTwin", "name": self.name,
             "profile": "ideal" if self.profile is None else self.profile.describe()}
        if self.plan is not None:
            d["placement"] = dict(self.plan.placement, notes=self.plan.notes)
        return d


def twin_of(device: Device, profile: Profile | None, name: str = "twin") -> Device:
    """The twin of ``device`` under ``profile``: its ``twin(profile)`` when it has one, else the emulator."""
    make = getattr(device, "twin", None)
    return make(profile, name=name) if callable(make) else Emulator(profile, name=name)


def _with_chip_adc(profile: Profile | None, limits: dict) -> Profile | None:
    """``profile`` with the ADC the chip reports (OUTP:BITS?, OUTP:RANG?) where it leaves the ADC open.

    A chip's outputs lie on its ADC grid; a calibration that could not resolve the step (a noise-free
    chip shows none) leaves ``adc.bits`` empty, and the twin would then differ from the chip by float32
    rounding alone."""
    import yaml

    from ..profiles import parse_profile

    if "output_bits" not in limits or "output_range" not in limits:
        return profile
    data = dict(profile.data) if profile is not None else {"name": "ideal", "version": 1,
                                                           "provenance": {"source": "chip limits"}}
    adc = dict(data.get("adc") or {})
    if adc.get("bits") is not None:
        return profile
    adc.update(bits=int(limits["output_bits"]), range=[float(v) for v in limits["output_range"]])
    data["adc"] = adc
    return parse_profile(yaml.safe_dump(_plain(data), sort_keys=False),
                         profile.path if profile is not None else None)


def _plain(value):
    """LineMap and tuples as plain dicts and lists (for yaml.safe_dump)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
