"""The profile's JSON Schema, built from the settings dataclasses (``hwloop.profiles.settings``).

``PROFILE_SCHEMA`` is what the validator checks; ``hwloop profile schema``
prints it and ``hwloop/schema/profile.schema.json`` is that text, published
for editors.  The device sections come from ``LayerSettings``' fields; only
the profile's own keys (format, name, version, provenance, ...) are written here.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from .settings import LayerSettings, key_schemas

#: version of the profile format (the schema), not of an individual profile
FORMAT = 1


def _sections() -> dict[str, dict]:
    """One JSON Schema object per profile section, from the settings dataclasses."""
    return {f.name: {"type": "object", "description": f.metadata["description"], "additionalProperties": False,
                     "properties": key_schemas(type(f.default))}
            for f in fields(LayerSettings)}


SECTION_SCHEMAS: dict[str, dict] = _sections()

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
        **SECTION_SCHEMAS,
        "layers": {
            "type": "object",
            "description": "Per-layer overrides, keyed by layer index (0-based) or ONNX layer name; "
                           "applied on top of the profile-wide sections (index first, then name).",
            "additionalProperties": {"type": "object", "additionalProperties": False, "properties": SECTION_SCHEMAS},
        },
    },
}

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "profile.schema.json"


def schema_json() -> str:
    """The published JSON Schema text (what ``hwloop/schema/profile.schema.json`` must contain)."""
    return json.dumps(PROFILE_SCHEMA, indent=2) + "\n"
