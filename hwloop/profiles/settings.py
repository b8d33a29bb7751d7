"""The settings a device reads for one layer, each key declared once with its schema.

Every field of the section dataclasses carries its JSON Schema fragment (type,
range, default, description) in its metadata, and takes its Python default
from that fragment: ``hwloop.profiles.schema`` builds ``PROFILE_SCHEMA`` from
these fields, so a key, its default and its documentation live in one place.
``LayerSettings``' fields are the profile's sections, in schema order, with
the section's description.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..activations import NAMES as MODEL_ACTIVATIONS
from ..layer import TRANSFER_FUNCTIONS


def _num(desc: str, default: float | None = 0.0, minimum: float | None = 0.0, nullable: bool = False) -> dict:
    s: dict[str, Any] = {"type": ["number", "null"] if nullable else "number", "description": desc}
    if minimum is not None:
        s["minimum"] = minimum
    s["default"] = default
    return s


def _bits(desc: str) -> dict:
    return {"type": ["integer", "null"], "minimum": 1, "maximum": 32, "default": None, "description": desc}


def _range(desc: str) -> dict:
    return {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
            "default": None, "description": desc}


def _count(desc: str) -> dict:
    return {"type": ["integer", "null"], "minimum": 1, "default": None, "description": desc}


def _choice(options: list, default: str, desc: str) -> dict:
    return {"enum": options, "default": default, "description": desc}


def key(schema: dict) -> Any:
    """A settings field described by ``schema``; its default is the schema's ``default``."""
    return field(default=copy.deepcopy(schema["default"]), metadata={"schema": schema})


def section(cls: type, description: str) -> Any:
    """A profile section (a ``LayerSettings`` field) holding ``cls``, all defaults."""
    return field(default=cls(), metadata={"description": description})


def key_schemas(cls: type) -> dict[str, dict]:
    """The schema properties of one section: its load-only keys, then one per dataclass field."""
    return {**cls.LOAD_ONLY, **{f.name: f.metadata["schema"] for f in fields(cls)}}


class _Section:
    #: keys a profile may write that only steer loading (not settings a device reads)
    LOAD_ONLY: ClassVar[dict[str, dict]] = {}


@dataclass(frozen=True)
class NoiseSettings(_Section):
    """Neuron noise; ``D_*`` are variances."""

    LOAD_ONLY: ClassVar[dict[str, dict]] = {"units": _choice(
        ["variance", "std"], "variance",
        "How D_A, D_M, D_AC, D_MC in this mapping are given: variance "
        "(D = std^2) or std (squared on loading). The SDE convention D/2 is not used.")}

    D_A: float = key(_num("uncorrelated additive noise intensity (per neuron)"))
    D_M: float = key(_num("uncorrelated multiplicative noise intensity (per neuron, variance relative to x^2)"))
    D_AC: float = key(_num("correlated additive noise intensity (one draw shared by the layer)"))
    D_MC: float = key(_num("correlated multiplicative noise intensity (one draw shared by the layer)"))
    placement: str = key(_choice(["post", "pre", "both"], "post",
                                 "post: after the activation (Semenova); pre: on the pre-activation; "
                                 "both: the same intensities at both places"))
    dither: float = key(_num("full width w of a uniform additive dither U(-w/2, w/2) on the output (variance w^2/12)"))
    shot: float = key(_num("shot noise: Gaussian with variance shot * |x| on the output (Poisson-like detector noise)"))

    @property
    def active(self) -> bool:
        return any((self.D_A, self.D_M, self.D_AC, self.D_MC, self.dither, self.shot))

    @property
    def pre(self) -> bool:
        return self.placement in ("pre", "both")

    @property
    def post(self) -> bool:
        return self.placement in ("post", "both")


#: the noise intensities (variances; written as standard deviations with ``units: std``)
INTENSITIES = tuple(f.name for f in fields(NoiseSettings) if f.name.startswith("D_"))


@dataclass(frozen=True)
class Converter(_Section):
    """A DAC or ADC: clip to ``range`` (when given), quantise to ``bits`` (when given)."""

    bits: int | None = key(_bits("resolution in bits (null: no quantisation)"))
    range: tuple[float, float] | None = key(
        _range("[min, max] full scale; values outside are clipped and counted (null: no clipping)"))

    @property
    def active(self) -> bool:
        return self.bits is not None or self.range is not None


@dataclass(frozen=True)
class WeightSettings(_Section):
    """Weight programming; noise stds are fractions of the full scale (see ``physics.program_weights``)."""

    bits: int | None = key(_bits("programming resolution: 2^bits levels spanning [-wmax, wmax] (null: exact)"))
    range: float | None = key(_num("wmax: weights are clipped to [-wmax, wmax] and counted "
                                   "(null: the layer's max |W|, no clipping)",
                                   default=None, minimum=None, nullable=True))
    program_noise: float = key(_num("std of the static programming error (fraction of full scale), "
                                    "drawn once at program()"))
    read_noise: float = key(_num("std of the read error (fraction of full scale), drawn on every evaluation"))

    @property
    def active(self) -> bool:
        return self.bits is not None or self.range is not None or bool(self.program_noise or self.read_noise)


@dataclass(frozen=True)
class GainOffset(_Section):
    """Static per-neuron spread: std of the gain around 1 and of the output offset."""

    gain: float = key(_num("std of the per-neuron gain around 1"))
    offset: float = key(_num("std of the per-neuron output offset"))

    @property
    def active(self) -> bool:
        return bool(self.gain or self.offset)


@dataclass(frozen=True)
class Transfer(_Section):
    """The chip's neuron response ``scale * f(slope * a)``; ``model`` is the ONNX activation."""

    function: str = key(_choice(["model", *TRANSFER_FUNCTIONS], "model",
                                "model: the ONNX model's activation; sin2: sin^2 (optical modulator); "
                                "exp_sat: 1 - exp(-max(a, 0)) (saturating detector)"))
    slope: float = key(_num("slope factor applied to the pre-activation", default=1.0, minimum=None))
    scale: float = key(_num("scale factor applied to the output", default=1.0, minimum=None))
    # what the neurons implement (None: every model activation)
    activations: tuple[str, ...] | None = key(
        {"type": ["array", "null"], "items": {"enum": list(MODEL_ACTIVATIONS)}, "default": None,
         "description": "the model activations the neurons implement (null: all); a layer with "
                        "another one runs linearly on the device and its activation runs on the "
                        "host, exact, after the device's noise"})

    @property
    def active(self) -> bool:
        return not (self.function == "model" and self.slope == 1.0 and self.scale == 1.0)

    def on_host(self, activation: str) -> bool:
        """True when the neurons lack ``activation``: the device runs linearly and the host applies it."""
        return self.activations is not None and activation != "linear" and activation not in self.activations


@dataclass(frozen=True)
class Drift(_Section):
    """Slow drift: g(t) = g (1 + gain t), o(t) = o + offset t, t counted ``per`` repeat/batch/second."""

    per: str = key(_choice(["repeat", "batch", "second"], "repeat",
                           "t counts repetitions (within a batch), batches (key[-1]) or seconds since program()"))
    gain: float = key(_num("relative gain change per unit of t", minimum=None))
    offset: float = key(_num("offset change per unit of t", minimum=None))

    @property
    def active(self) -> bool:
        return bool(self.gain or self.offset)


@dataclass(frozen=True)
class ArraySize(_Section):
    """Inputs (rows) and outputs (cols) of one array tile; None: unlimited."""

    rows: int | None = key(_count("inputs per tile (null: unlimited)"))
    cols: int | None = key(_count("outputs per tile (null: unlimited)"))


@dataclass(frozen=True)
class LayerSettings:
    """Everything a device needs to emulate one layer (profile defaults merged with overrides)."""

    noise: NoiseSettings = section(
        NoiseSettings, "Neuron noise y_i = x_i (1 + xi_M,i + xi_MC) + xi_A,i + xi_AC (Semenova et al.); "
                       "_C terms are one draw shared by the layer (or tile) per sample and repetition.")
    dac: Converter = section(
        Converter, "Input DAC: inputs are clipped to range and quantised to 2^bits levels spanning it (off when both null).")
    adc: Converter = section(
        Converter, "Output ADC: outputs are clipped to range and quantised to 2^bits levels spanning it "
                   "(off when both null).")
    weights: WeightSettings = section(
        WeightSettings, "Weight programming. Full scale is range (wmax) or, when null, the layer's max |W|. "
                        "Noise stds are fractions of full scale.")
    gain_offset: GainOffset = section(
        GainOffset, "Static per-neuron spread, drawn once at program(): y = g_i * f(a) + o_i with "
                    "g_i ~ N(1, gain^2), o_i ~ N(0, offset^2).")
    transfer: Transfer = section(
        Transfer, "The neuron's physical transfer function y = scale * f(slope * a), when it differs from "
                  "the model's activation.")
    drift: Drift = section(
        Drift, "Slow drift of every neuron's gain and offset: g(t) = g (1 + gain * t), o(t) = o + offset * t.")
    array: ArraySize = section(
        ArraySize, "Finite array size. A layer with more inputs than rows is split into tiles run linearly, "
                   "whose partial sums are combined digitally before bias and activation; more outputs than "
                   "cols: split into column tiles. Each tile has its own noise draws (correlated terms are "
                   "shared within a tile).")

    @property
    def ideal(self) -> bool:
        """True when nothing departs from exact arithmetic (tiling alone changes only rounding)."""
        return not any(getattr(self, f.name).active for f in fields(self) if f.name != "array")


#: section name -> its settings class, in schema order
SECTIONS: dict[str, type] = {f.name: type(f.default) for f in fields(LayerSettings)}


def layer_settings(sections: dict[str, dict]) -> LayerSettings:
    """Settings from merged section mappings (load-only keys dropped, lists made tuples)."""
    kw = {}
    for name, cls in SECTIONS.items():
        vals = {k: v for k, v in sections.get(name, {}).items() if k not in cls.LOAD_ONLY}
        if isinstance(vals.get("range"), list):
            vals["range"] = tuple(float(v) for v in vals["range"])
        if isinstance(vals.get("activations"), list):
            vals["activations"] = tuple(vals["activations"])
        kw[name] = cls(**vals)
    return LayerSettings(**kw)
