"""Each profile key declared once: the settings dataclasses and the schema built from them agree."""

from __future__ import annotations

import dataclasses

import pytest

from hwloop.errors import HwloopError
from hwloop.profiles import PROFILE_SCHEMA, LayerSettings, NoiseSettings, ideal_profile, parse_profile
from hwloop.profiles.settings import INTENSITIES, SECTIONS

HEAD = "version: 1\nprovenance: {source: hand-written}\n"


def test_every_schema_key_is_a_settings_field_with_the_schema_default():
    props = PROFILE_SCHEMA["properties"]
    assert [f.name for f in dataclasses.fields(LayerSettings)] == list(SECTIONS)
    for name, cls in SECTIONS.items():
        keys = props[name]["properties"]
        assert list(keys) == [*cls.LOAD_ONLY, *(f.name for f in dataclasses.fields(cls))], name
        for f in dataclasses.fields(cls):
            assert getattr(cls(), f.name) == keys[f.name]["default"], (name, f.name)
        assert props[name] is PROFILE_SCHEMA["properties"]["layers"]["additionalProperties"]["properties"][name]
    assert LayerSettings() == ideal_profile().defaults and LayerSettings().ideal
    assert INTENSITIES == ("D_A", "D_M", "D_AC", "D_MC")


def test_unknown_keys_are_named_from_the_fields_and_std_units_are_squared():
    """The schema is derived: an unknown key is refused naming the known ones, taken from the fields."""
    with pytest.raises(HwloopError, match=r"<profile>:4: noise\.D_X: unknown key \(known: units, D_A, D_M, D_AC, "
                                        r"D_MC, placement, dither, shot\)"):
        parse_profile(HEAD + "noise:\n  D_X: 1\n")
    s = parse_profile(HEAD + "noise: {units: std, D_A: 0.1, placement: both}\narray: {rows: 8}\n").for_layer(0, "x")
    assert s.noise == NoiseSettings(D_A=pytest.approx(0.01), placement="both") and s.array.rows == 8
    assert s.noise.pre and s.noise.post and not s.ideal
