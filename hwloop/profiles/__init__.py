"""YAML device profiles: what an analog chip does to a layer, validated against one schema.

A profile describes the noise and non-idealities a device adds (see
``docs/profiles.md``).  Each key is declared once, as a field of a settings
dataclass with its schema fragment (``settings``); ``PROFILE_SCHEMA`` is built
from those fields (``schema``): the validator uses it (``validate``), the
published ``hwloop/schema/profile.schema.json`` is generated from it
(``hwloop profile schema``), and the dataclasses take their defaults from it.
``profile`` loads, merges per-layer overrides and writes profiles.

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

from .profile import (Profile, available_profiles, dump_profile, ideal_profile, load_profile, parse_profile,
                      profile_dirs)
from .schema import FORMAT, PROFILE_SCHEMA, SCHEMA_FILE, schema_json
from .settings import (ArraySize, Converter, Drift, GainOffset, LayerSettings, NoiseSettings, Transfer,
                       WeightSettings)
from .validate import _explain  # noqa: F401  (bench instrument files translate their schema errors with it)

__all__ = ["PROFILE_SCHEMA", "Profile", "LayerSettings", "NoiseSettings", "Converter", "WeightSettings",
           "GainOffset", "Transfer", "Drift", "ArraySize", "load_profile", "parse_profile", "dump_profile",
           "schema_json", "available_profiles", "profile_dirs", "ideal_profile", "FORMAT", "SCHEMA_FILE"]
