"""Multi-execution as a run option: a device that evaluates its layer k times and averages (Walking Noise).

Why a device wrapper and not a model transform: k executions of a layer on a
chip are k passes through the same array, each with its own noise draws, the
correlated ones included, averaged on the host.  Copying the layer k times
inside one ONNX model would put the copies side by side on the array,
sharing one correlated draw per pass, which is duplication, a different
strategy.  So the weights stay as they are; the number of executions per
layer travels with the model as ONNX metadata (``hwloop.multi_exec``) and
``wrap_devices`` turns any devices (emulators, chips over VISA) into ones
that honour it.  Its cost is time (k measurements), not array area.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np

from ..devices.base import Device
from ..errors import HwloopError
from ..layer import AnalogLayer

METADATA_KEY = "hwloop.multi_exec"


class MultiExec(Device):
    """Runs the wrapped device's layer ``k`` times per repetition and returns the mean of the k results."""

    def __init__(self, inner: Device, k: int):
        if int(k) < 1:
            raise HwloopError(f"multi-execution needs k >= 1, got {k}")
        self.inner, self.k = inner, int(k)

    @property
    def remote(self) -> bool:  # type: ignore[override]
        return self.inner.remote

    @property
    def hardware(self) -> object:
        return self.inner.hardware

    @property
    def ideal(self) -> bool:
        return self.k == 1 and bool(getattr(self.inner, "ideal", False))

    @property
    def layer(self) -> AnalogLayer | None:  # type: ignore[override]
        return self.inner.layer

    def program(self, layer: AnalogLayer, *, seed: int = 0) -> None:
        self.inner.program(layer, seed=seed)

    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        if self.k == 1:
            return self.inner.run(x, repeats=repeats, key=key)
        xs = x if x.shape[0] == 1 else np.repeat(x, self.k, axis=0)   # copies of repetition r side by side
        y = np.asarray(self.inner.run(xs, repeats=repeats * self.k, key=key))
        return y.reshape(repeats, self.k, *y.shape[1:]).mean(axis=1, dtype=np.float32)

    def interrupt(self) -> None:
        self.inner.interrupt()

    def describe(self) -> dict:
        return {**self.inner.describe(), "multi_exec": self.k}

    def close(self) -> None:
        self.inner.close()


def encode(average: Mapping[int, int]) -> str:
    """The metadata value: JSON {layer index: executions}."""
    return json.dumps({str(int(k)): int(v) for k, v in sorted(average.items())})


def read_plan(model) -> dict[int, int]:
    """Executions per layer carried by ``model`` (a ``hwloop.graph.Model``); {} when none."""
    props = {p.key: p.value for p in model.proto.metadata_props}
    if METADATA_KEY not in props:
        return {}
    try:
        raw = json.loads(props[METADATA_KEY])
        plan = {int(k): int(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError):
        raise HwloopError(f"{model.path}: metadata {METADATA_KEY!r} is not a JSON mapping of layer index to "
                          f"executions: {props[METADATA_KEY]!r}") from None
    bad = [k for k, v in plan.items() if not 0 <= k < len(model.layers) or v < 1]
    if bad:
        raise HwloopError(f"{model.path}: metadata {METADATA_KEY!r}: layer {bad[0]} is not an analog layer of the "
                          f"model or has fewer than 1 execution")
    return plan


def wrap_devices(model, devices: Mapping[int, Device] | None, plan: Mapping[int, int] | None = None
                 ) -> Mapping[int, Device] | None:
    """``devices`` with every layer of ``plan`` (default: the model's metadata) wrapped in ``MultiExec``."""
    plan = read_plan(model) if plan is None else dict(plan)
    if not any(k > 1 for k in plan.values()):
        return devices
    from ..runner import resolve_devices

    per_layer = resolve_devices(model, devices)
    return {n: MultiExec(d, plan[n]) if plan.get(n, 1) > 1 else d for n, d in enumerate(per_layer)}
