"""``ChipSpec``: what a simulated ANB controller reports about itself (capacity, ranges) and how fast it is.

Read by the simulated controller (``hwloop.bench.controller``), by ``hwloop
bench serve --chip FILE.yaml`` and by bench files' dry-run plans.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import HwloopError


@dataclass
class ChipSpec:
    """What the controller reports about itself (capacity, ranges) and how fast it is.

    Defaults are the ANB-64R of the manual's example session.  ``time_scale``
    multiplies the manual's worst-case timings (0: instantaneous).
    """

    manufacturer: str = "Lumen Analog Instruments"
    model: str = "ANB-64R"
    serial: str = "SN0042"
    firmware: str = "2.3.1"
    max_inputs: int = 256
    max_outputs: int = 64
    max_batch: int = 4096
    max_repeats: int = 1000
    weight_range: float = 1.0
    bias_range: float = 4.0
    input_range: tuple[float, float] = (-1.0, 1.0)
    output_range: tuple[float, float] = (-16.0, 16.0)
    output_bits: int = 16
    activations: tuple[str, ...] = ("SIGMoid", "TANH", "RELU", "LINear")
    temperature: float = 25.0               # degrees C at start
    temperature_swing: float = 0.3          # amplitude of the slow drift, degrees C
    temperature_period_s: float = 600.0
    temperature_spec: tuple[float, float] = (10.0, 40.0)
    gain_tc: float = 0.0                    # relative gain change per degree C from the start temperature
    time_scale: float = 0.1                 # 1.0 = the manual's worst-case timing
    program_s: float = 50e-3
    program_per_weight_s: float = 1e-6
    eval_s: float = 20e-6

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ChipSpec":
        """A chip description file (safe YAML, keys as the fields above); errors name file and line."""
        from ..yamlio import LineMap, load_yaml_file

        path = Path(path)
        data = load_yaml_file(path, "chip description")
        if data is None:
            data = LineMap()
        if not isinstance(data, LineMap):
            raise HwloopError(f"{path}:1: a chip description is a mapping of settings")
        defaults = cls()
        out = {}
        for k, v in data.items():
            where = f"{path}:{data.line_of(k)}"
            if not hasattr(defaults, k):
                raise HwloopError(f"{where}: unknown key {k!r} (known: {', '.join(f.name for f in fields(cls))})")
            want = getattr(defaults, k)
            v = tuple(v) if isinstance(v, list) else v
            ok = isinstance(v, type(want)) or (isinstance(want, float) and isinstance(v, int))
            if not ok or isinstance(v, bool) or (isinstance(want, tuple) and len(v) != len(want) and k != "activations"):
                raise HwloopError(f"{where}: {k}: expected {type(want).__name__} like {want!r}, got {v!r}")
            out[k] = v
        return cls(**out)

    def matching(self, profile) -> "ChipSpec":
        """This chip with the ADC and array size of ``profile`` where the profile states them."""
        if profile is None:
            return self
        s = profile.defaults
        spec = replace(self)
        if s.adc.range is not None:
            spec.output_range = tuple(float(v) for v in s.adc.range)
        if s.adc.bits is not None:
            spec.output_bits = int(s.adc.bits)
        if s.array.rows is not None:
            spec.max_inputs = int(s.array.rows)
        if s.array.cols is not None:
            spec.max_outputs = int(s.array.cols)
        return spec

    @property
    def limits(self) -> dict:
        return {"max_inputs": self.max_inputs, "max_outputs": self.max_outputs,
                "max_batch": self.max_batch, "max_repeats": self.max_repeats}

    @property
    def output_step(self) -> float:
        lo, hi = self.output_range
        return (hi - lo) / (2 ** self.output_bits - 1)
