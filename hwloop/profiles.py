"""YAML device profiles: what an analog chip does to a layer, validated against one schema.

A profile describes the noise and non-idealities a device adds (see
``docs/profiles.md``).  ``PROFILE_SCHEMA`` below is the single definition of
keys, types, ranges and defaults: the validator uses it, the published
``hwloop/schema/profile.schema.json`` is generated from it (``hwloop profile
schema``), and ``LayerSettings`` takes its defaults from it.

Noise intensities are variances: ``D = std**2``.  The stochastic-differential
equation convention (variance ``2D``) is NOT used.  A profile may write
standard deviations instead with ``noise: {units: std}``; they are squared on
loading, so ``LayerSettings.noise.D_*`` are always variances.

Bare names (``semenova``) resolve, in order, in the folders of
``$HWLOOP_PROFILE_PATH`` (``os.pathsep``-separated), the checkout's
``device_profiles/`` (next to the package) and an installed copy under
``<sys.prefix>/share/hwloop/device_profiles``.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import HwloopError
from .files import atomic_path
from .activations import NAMES as MODEL_ACTIVATIONS
from .layer import TRANSFER_FUNCTIONS
from .yamlio import line_of, load_yaml

#: version of the profile format (the schema), not of an individual profile
FORMAT = 1

# ---------------------------------------------------------------------------
# The schema: one definition, used for validation, defaults and the JSON file.
# ---------------------------------------------------------------------------


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


def _section(desc: str, props: dict) -> dict:
    return {"type": "object", "description": desc, "additionalProperties": False, "properties": props}


_SECTIONS: dict[str, dict] = {
    "noise": _section(
        "Neuron noise y_i = x_i (1 + xi_M,i + xi_MC) + xi_A,i + xi_AC (Semenova et al.); "
        "_C terms are one draw shared by the layer (or tile) per sample and repetition.",
        {
            "units": {"enum": ["variance", "std"], "default": "variance",
                      "description": "How D_A, D_M, D_AC, D_MC in this mapping are given: variance "
                                     "(D = std^2) or std (squared on loading). The SDE convention D/2 is not used."},
            "D_A": _num("uncorrelated additive noise intensity (per neuron)"),
            "D_M": _num("uncorrelated multiplicative noise intensity (per neuron, variance relative to x^2)"),
            "D_AC": _num("correlated additive noise intensity (one draw shared by the layer)"),
            "D_MC": _num("correlated multiplicative noise intensity (one draw shared by the layer)"),
            "placement": {"enum": ["post", "pre", "both"], "default": "post",
                          "description": "post: after the activation (Semenova); pre: on the pre-activation; "
                                         "both: the same intensities at both places"},
            "dither": _num("full width w of a uniform additive dither U(-w/2, w/2) on the output (variance w^2/12)"),
            "shot": _num("shot noise: Gaussian with variance shot * |x| on the output (Poisson-like detector noise)"),
        }),
    "dac": _section(
        "Input DAC: inputs are clipped to range and quantised to 2^bits levels spanning it (off when both null).",
        {"bits": _bits("resolution in bits (null: no quantisation)"),
         "range": _range("[min, max] full scale; values outside are clipped and counted (null: no clipping)")}),
    "adc": _section(
        "Output ADC: outputs are clipped to range and quantised to 2^bits levels spanning it (off when both null).",
        {"bits": _bits("resolution in bits (null: no quantisation)"),
         "range": _range("[min, max] full scale; values outside are clipped and counted (null: no clipping)")}),
    "weights": _section(
        "Weight programming. Full scale is range (wmax) or, when null, the layer's max |W|. "
        "Noise stds are fractions of full scale.",
        {"bits": _bits("programming resolution: 2^bits levels spanning [-wmax, wmax] (null: exact)"),
         "range": _num("wmax: weights are clipped to [-wmax, wmax] and counted (null: the layer's max |W|, no clipping)",
                       default=None, minimum=None, nullable=True),
         "program_noise": _num("std of the static programming error (fraction of full scale), drawn once at program()"),
         "read_noise": _num("std of the read error (fraction of full scale), drawn on every evaluation")}),
    "gain_offset": _section(
        "Static per-neuron spread, drawn once at program(): y = g_i * f(a) + o_i with g_i ~ N(1, gain^2), o_i ~ N(0, offset^2).",
        {"gain": _num("std of the per-neuron gain around 1"),
         "offset": _num("std of the per-neuron output offset")}),
    "transfer": _section(
        "The neuron's physical transfer function y = scale * f(slope * a), when it differs from the model's activation.",
        {"function": {"enum": ["model", *TRANSFER_FUNCTIONS], "default": "model",
                      "description": "model: the ONNX model's activation; sin2: sin^2 (optical modulator); "
                                     "exp_sat: 1 - exp(-max(a, 0)) (saturating detector)"},
         "slope": _num("slope factor applied to the pre-activation", default=1.0, minimum=None),
         "scale": _num("scale factor applied to the output", default=1.0, minimum=None),
         "activations": {"type": ["array", "null"], "items": {"enum": list(MODEL_ACTIVATIONS)}, "default": None,
                         "description": "the model activations the neurons implement (null: all); a layer with "
                                        "another one runs linearly on the device and its activation runs on the "
                                        "host, exact, after the device's noise"}}),
    "drift": _section(
        "Slow drift of every neuron's gain and offset: g(t) = g (1 + gain * t), o(t) = o + offset * t.",
        {"per": {"enum": ["repeat", "batch", "second"], "default": "repeat",
                 "description": "t counts repetitions (within a batch), batches (key[-1]) or seconds since program()"},
         "gain": _num("relative gain change per unit of t", minimum=None),
         "offset": _num("offset change per unit of t", minimum=None)}),
    "array": _section(
        "Finite array size. A layer with more inputs than rows is split into tiles run linearly, whose partial sums "
        "are combined digitally before bias and activation; more outputs than cols: split into column tiles. "
        "Each tile has its own noise draws (correlated terms are shared within a tile).",
        {"rows": {"type": ["integer", "null"], "minimum": 1, "default": None,
                  "description": "inputs per tile (null: unlimited)"},
         "cols": {"type": ["integer", "null"], "minimum": 1, "default": None,
                  "description": "outputs per tile (null: unlimited)"}}),
}

PROFILE_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://hwloop.invalid/schema/profile.schema.json",
    "title": "hwloop device profile",
    "description": "Noise and non-idealities of an analog neural-network device. Every section is optional; "
                   "an absent key takes its default (the ideal device). Noise intensities are variances (D = std^2).",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "provenance"],
    "properties": {
        "format": {"const": FORMAT, "default": FORMAT, "description": "profile format version (of this schema)"},
        "name": {"type": "string", "description": "short name of the profile"},
        "version": {"type": ["string", "integer", "number"], "description": "version of this profile"},
        "description": {"type": "string", "description": "what device this profile describes"},
        "provenance": {
            "type": "object", "required": ["source"], "additionalProperties": True,
            "description": "Who or what made this profile. Calibration adds its own keys (plan, idn, ...).",
            "properties": {
                "source": {"enum": ["hand-written", "calibrated", "literature", "assumption"],
                           "description": "how the values were obtained"},
                "author": {"type": "string"},
                "instrument": {"type": "string", "description": "instrument identity (*IDN?) when calibrated"},
                "date": {"type": "string", "description": "ISO date of creation or calibration"},
                "reference": {"type": "string", "description": "where the magnitudes come from"},
                "notes": {"type": "string"},
            },
        },
        "uncertainty": {"type": "object", "additionalProperties": True,
                        "description": "free-form uncertainties of fitted values, e.g. {noise: {D_A: 1e-6}}"},
        **_SECTIONS,
        "layers": {
            "type": "object",
            "description": "Per-layer overrides, keyed by layer index (0-based) or ONNX layer name; "
                           "applied on top of the profile-wide sections (index first, then name).",
            "additionalProperties": {"type": "object", "additionalProperties": False, "properties": _SECTIONS},
        },
    },
}


def schema_json() -> str:
    """The published JSON Schema text (what ``hwloop/schema/profile.schema.json`` must contain)."""
    return json.dumps(PROFILE_SCHEMA, indent=2) + "\n"


SCHEMA_FILE = Path(__file__).with_name("schema") / "profile.schema.json"

# ---------------------------------------------------------------------------
# Settings objects (what devices read)
# ---------------------------------------------------------------------------


def _default(section: str, key: str) -> Any:
    return copy.deepcopy(_SECTIONS[section]["properties"][key]["default"])


@dataclass(frozen=True)
class NoiseSettings:
    """Neuron noise; ``D_*`` are variances."""

    D_A: float = _default("noise", "D_A")
    D_M: float = _default("noise", "D_M")
    D_AC: float = _default("noise", "D_AC")
    D_MC: float = _default("noise", "D_MC")
    placement: str = _default("noise", "placement")
    dither: float = _default("noise", "dither")
    shot: float = _default("noise", "shot")

    @property
    def active(self) -> bool:
        return any((self.D_A, self.D_M, self.D_AC, self.D_MC, self.dither, self.shot))

    @property
    def pre(self) -> bool:
        return self.placement in ("pre", "both")

    @property
    def post(self) -> bool:
        return self.placement in ("post", "both")


@dataclass(frozen=True)
class Converter:
    """A DAC or ADC: clip to ``range`` (when given), quantise to ``bits`` (when given)."""

    bits: int | None = None
    range: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return self.bits is not None or self.range is not None


@dataclass(frozen=True)
class WeightSettings:
    """Weight programming; noise stds are fractions of the full scale (see ``physics.program_weights``)."""

    bits: int | None = _default("weights", "bits")
    range: float | None = _default("weights", "range")
    program_noise: float = _default("weights", "program_noise")
    read_noise: float = _default("weights", "read_noise")

    @property
    def active(self) -> bool:
        return self.bits is not None or self.range is not None or bool(self.program_noise or self.read_noise)


@dataclass(frozen=True)
class GainOffset:
    """Static per-neuron spread: std of the gain around 1 and of the output offset."""

    gain: float = _default("gain_offset", "gain")
    offset: float = _default("gain_offset", "offset")

    @property
    def active(self) -> bool:
        return bool(self.gain or self.offset)


@dataclass(frozen=True)
class Transfer:
    """The chip's neuron response ``scale * f(slope * a)``; ``model`` is the ONNX activation."""

    function: str = _default("transfer", "function")
    slope: float = _default("transfer", "slope")
    scale: float = _default("transfer", "scale")
    activations: tuple[str, ...] | None = None   # what the neurons implement (None: every model activation)

    @property
    def active(self) -> bool:
        return not (self.function == "model" and self.slope == 1.0 and self.scale == 1.0)

    def on_host(self, activation: str) -> bool:
        """True when the neurons lack ``activation``: the device runs linearly and the host applies it."""
        return self.activations is not None and activation != "linear" and activation not in self.activations


@dataclass(frozen=True)
class Drift:
    """Slow drift: g(t) = g (1 + gain t), o(t) = o + offset t, t counted ``per`` repeat/batch/second."""

    per: str = _default("drift", "per")
    gain: float = _default("drift", "gain")
    offset: float = _default("drift", "offset")

    @property
    def active(self) -> bool:
        return bool(self.gain or self.offset)


@dataclass(frozen=True)
class ArraySize:
    """Inputs (rows) and outputs (cols) of one array tile; None: unlimited."""

    rows: int | None = None
    cols: int | None = None


@dataclass(frozen=True)
class LayerSettings:
    """Everything a device needs to emulate one layer (profile defaults merged with overrides)."""

    noise: NoiseSettings = NoiseSettings()
    dac: Converter = Converter()
    adc: Converter = Converter()
    weights: WeightSettings = WeightSettings()
    gain_offset: GainOffset = GainOffset()
    transfer: Transfer = Transfer()
    drift: Drift = Drift()
    array: ArraySize = ArraySize()

    @property
    def ideal(self) -> bool:
        """True when nothing departs from exact arithmetic (tiling alone changes only rounding)."""
        return not any(getattr(self, f.name).active for f in fields(self) if f.name != "array")


_CLASSES = {"noise": NoiseSettings, "dac": Converter, "adc": Converter, "weights": WeightSettings,
            "gain_offset": GainOffset, "transfer": Transfer, "drift": Drift, "array": ArraySize}


def _settings(sections: dict[str, dict]) -> LayerSettings:
    kw = {}
    for name, cls in _CLASSES.items():
        vals = dict(sections.get(name, {}))
        vals.pop("units", None)
        if "range" in vals and isinstance(vals["range"], list):
            vals["range"] = tuple(float(v) for v in vals["range"])
        if isinstance(vals.get("activations"), list):
            vals["activations"] = tuple(vals["activations"])
        kw[name] = cls(**vals)
    return LayerSettings(**kw)


# ---------------------------------------------------------------------------
# The profile
# ---------------------------------------------------------------------------


@dataclass
class Profile:
    """A loaded, validated profile.  ``data`` is the parsed YAML (variances as written)."""

    data: dict
    text: str
    path: Path | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def name(self) -> str:
        return str(self.data.get("name") or (self.path.stem if self.path else "profile"))

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def provenance(self) -> dict:
        return dict(self.data.get("provenance", {}))

    @property
    def defaults(self) -> LayerSettings:
        return self.for_layer(None, None)

    def for_layer(self, index: int | None, name: str | None) -> LayerSettings:
        """Settings for the layer with this index/name: defaults, then the index override, then the name override."""
        merged = {s: _as_variances(self.data.get(s, {})) for s in _SECTIONS}
        layers = self.data.get("layers") or {}
        for key in (index, str(index) if index is not None else None, name):
            if key is not None and key in layers:
                for s, vals in layers[key].items():
                    merged[s] = {**merged[s], **_as_variances(vals)}
        return _settings(merged)

    def check_layers(self, layers: list) -> None:
        """Raise when a per-layer override names no layer of the model (a typo would otherwise be ignored)."""
        known = {str(l.index) for l in layers} | {l.name for l in layers}
        for key in self.data.get("layers") or {}:
            if str(key) not in known:
                line = getattr(self.data["layers"], "lines", {}).get(key, "?")
                raise HwloopError(f"{self.path or '<profile>'}:{line}: layers.{key}: no layer with this index "
                                  f"or name (model layers: {', '.join(l.name for l in layers)})")

    def describe(self) -> dict:
        """Provenance for a run store: name, version, hash and the full text."""
        return {"name": self.name, "version": self.version, "path": str(self.path) if self.path else None,
                "sha256": self.sha256, "provenance": _plain(self.provenance), "text": self.text}


def _as_variances(section: dict) -> dict:
    """Square noise intensities written as standard deviations."""
    vals = dict(section)
    if vals.pop("units", "variance") == "std":
        for k in ("D_A", "D_M", "D_AC", "D_MC"):
            if k in vals:
                vals[k] = float(vals[k]) ** 2
    return vals


def _plain(obj: Any) -> Any:
    """JSON-friendly copy (dates to ISO strings, line-tracking dicts to plain dicts)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, (datetime.date, datetime.datetime)):
        return obj.isoformat()
    return obj


# ---------------------------------------------------------------------------
# Loading and validation (errors name file, line and key)
# ---------------------------------------------------------------------------


def parse_profile(text: str, path: Path | str | None = None) -> Profile:
    """Parse and validate profile text; raise ``HwloopError`` ('file:line: key: problem') on the first problem."""
    label = str(path) if path else "<profile>"
    data = load_yaml(text, label)
    if not isinstance(data, dict):
        raise HwloopError(f"{label}:1: a profile must be a mapping of keys (got {type(data).__name__})")
    _validate(data, label)
    return Profile(data=data, text=text, path=Path(path) if path else None)


def load_profile(path_or_name: str | os.PathLike) -> Profile:
    """Load a profile from a file path, or by bare name (``semenova``) from the profile folders."""
    p = Path(path_or_name)
    if not p.exists() and p.suffix in ("", ".yaml") and os.sep not in str(path_or_name):
        fname = p.name if p.suffix else f"{p.name}.yaml"
        found = [d / fname for d in profile_dirs() if (d / fname).exists()]
        if not found:
            raise HwloopError(f"profile {str(path_or_name)!r}: no such file, and no profile of that name "
                              f"(known: {', '.join(available_profiles()) or 'none'})")
        p = found[0]
    if not p.exists():
        raise HwloopError(f"{p}: no such profile file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HwloopError(f"{p}: cannot read: {e}") from None
    return parse_profile(text, p)


def profile_dirs() -> list[Path]:
    """Folders searched for bare profile names, in order."""
    dirs = [Path(d) for d in os.environ.get("HWLOOP_PROFILE_PATH", "").split(os.pathsep) if d]
    dirs.append(Path(__file__).resolve().parents[1] / "device_profiles")
    dirs.append(Path(sys.prefix) / "share" / "hwloop" / "device_profiles")
    return [d for d in dirs if d.is_dir()]


def available_profiles() -> list[str]:
    """Bare names that ``load_profile`` resolves."""
    return sorted({f.stem for d in profile_dirs() for f in d.glob("*.yaml")})


def dump_profile(profile: "Profile | dict", path: str | os.PathLike, header: str = "") -> Profile:
    """Write a profile as YAML (validated first, so nothing invalid is written) and return it as loaded.

    ``header`` becomes leading ``#`` comment lines (e.g. where the magnitudes come from).  A loaded
    ``Profile`` with no header is written as its original text, comments included.
    """
    if isinstance(profile, Profile) and not header:
        text = profile.text
    else:
        data = _to_builtin(_plain(profile.data if isinstance(profile, Profile) else profile))
        comment = "".join(f"# {l}\n" if l else "#\n" for l in header.splitlines())
        text = comment + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)
    prof = parse_profile(text, path)  # raises before anything is written
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return prof


def _to_builtin(obj: Any) -> Any:
    """numpy scalars and tuples to plain Python, so safe_dump can write them."""
    if isinstance(obj, dict):
        return {k: _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    return obj


def _validate(data: dict, label: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(PROFILE_SCHEMA)
    problems = []
    for err in validator.iter_errors(data):
        problems.extend(_explain(err, data))
    problems.extend(_extra_checks(data))
    if problems:
        line, key, msg = min(problems, key=lambda p: (p[0] if isinstance(p[0], int) else 10**9, p[1]))
        raise HwloopError(f"{label}:{line}: {key}: {msg}" if key else f"{label}:{line}: {msg}")


def _dotted(path: list) -> str:
    return ".".join(str(p) for p in path)


def _explain(err, data) -> Iterator[tuple]:
    """Turn one jsonschema error into (line, key, message) tuples a user can act on."""
    path = list(err.absolute_path)
    inst, v = err.instance, err.validator
    if v == "additionalProperties" and isinstance(inst, dict):
        known = list(err.schema.get("properties", {}))
        for k in inst:
            if k not in known:
                hint = f" (known: {', '.join(known)})" if known else ""
                yield line_of(data, path + [k]), _dotted(path + [k]), f"unknown key{hint}"
        return
    if v == "required":
        missing = [k for k in err.validator_value if k not in inst]
        for k in missing:
            yield getattr(_node(data, path), "line", 1), _dotted(path + [k]), "missing required key"
        return
    msg = {
        "type": lambda: f"must be {_types(err.validator_value)} (got {_show(inst)})",
        "minimum": lambda: f"must be >= {err.validator_value} (got {_show(inst)})",
        "maximum": lambda: f"must be <= {err.validator_value} (got {_show(inst)})",
        "enum": lambda: f"must be one of {', '.join(map(str, err.validator_value))} (got {_show(inst)})",
        "const": lambda: f"must be {err.validator_value} (got {_show(inst)})",
        "minItems": lambda: f"must have exactly 2 items [min, max] (got {_show(inst)})",
        "maxItems": lambda: f"must have exactly 2 items [min, max] (got {_show(inst)})",
    }.get(v, lambda: err.message)()
    yield line_of(data, path), _dotted(path), msg


def _node(data, path):
    for p in path:
        data = data[p]
    return data


def _types(t) -> str:
    names = {"number": "a number", "integer": "an integer", "string": "a string", "array": "a list",
             "object": "a mapping", "null": "null", "boolean": "true/false"}
    ts = t if isinstance(t, list) else [t]
    return " or ".join(names.get(x, x) for x in ts)


def _show(v: Any) -> str:
    return repr(_plain(v)) if not isinstance(v, dict) else "a mapping"


def _extra_checks(data: dict) -> Iterator[tuple]:
    """What JSON Schema cannot say: finite numbers, min < max, zero-free divisions."""
    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, path + [i])
        elif isinstance(node, float) and not math.isfinite(node):
            yield line_of(data, [p for p in path if not isinstance(p, int)]), _dotted(path), \
                f"must be a finite number (got {node})"

    yield from walk(data, [])
    scopes = [([], data)] + [(["layers", k], v) for k, v in (data.get("layers") or {}).items()
                             if isinstance(v, dict)]
    for prefix, scope in scopes:
        for conv in ("dac", "adc"):
            sec = scope.get(conv)
            if isinstance(sec, dict):
                r = sec.get("range")
                if isinstance(r, list) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r) \
                        and not r[0] < r[1]:
                    path = prefix + [conv, "range"]
                    yield line_of(data, path), _dotted(path), f"min must be below max (got {r})"
                top = data.get(conv) if prefix and isinstance(data.get(conv), dict) else {}
                if sec.get("bits") is not None and sec.get("range", top.get("range")) is None:
                    path = prefix + [conv, "bits"]
                    yield line_of(data, path), _dotted(path), "quantising needs a range [min, max] as well"
        w = scope.get("weights")
        if isinstance(w, dict) and isinstance(w.get("range"), (int, float)) and not isinstance(w.get("range"), bool) \
                and w["range"] <= 0:
            path = prefix + ["weights", "range"]
            yield line_of(data, path), _dotted(path), f"must be > 0 (got {w['range']})"
        t = scope.get("transfer")
        if isinstance(t, dict) and t.get("slope") == 0:
            path = prefix + ["transfer", "slope"]
            yield line_of(data, path), _dotted(path), "must not be 0"


def ideal_profile() -> Profile:
    """An in-memory ideal profile (the same as ``device_profiles/ideal.yaml`` minus comments)."""
    return parse_profile("version: 1\nprovenance: {source: hand-written}\n", None)


__all__ = ["PROFILE_SCHEMA", "Profile", "LayerSettings", "NoiseSettings", "Converter", "WeightSettings",
           "GainOffset", "Transfer", "Drift", "ArraySize", "load_profile", "parse_profile", "dump_profile",
           "schema_json", "available_profiles", "profile_dirs", "ideal_profile"]
