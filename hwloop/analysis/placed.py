"""Which device ran which layer of a recorded run, the profile that describes it, and where its noise landed.

A run's provenance lists, per analog layer, the device's ``describe()``: an
emulator carries its profile; a chip names its calibrated profile through the
bench file (``twin:``) or gets one from ``--profile``; and a chip whose layer
was scaled into its ranges (``hwloop.bench.plan``) records the weight scale,
the input scales it needed and whether bias and activation ran on the host.
``layer_sources`` turns that into one ``LayerSource`` per layer, and
``as_placed`` maps a profile's noise onto the placement that really happened:
additive terms and the ADC step grow with the squared scale, and with the
activation on the host the chip's noise (and ADC) land before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import HwloopError
from ..profiles import Profile, ideal_profile, load_profile, parse_profile


@dataclass(frozen=True)
class LayerSource:
    """One analog layer of a run: the profile describing its device, the placement, a label for reports."""

    profile: Profile
    placement: dict | None        # {"activation": "host"|"chip", "scale_sq": E[S^2], ...} or None
    label: str


def layer_sources(attrs: dict, profile: str | Path | None = None) -> list[LayerSource]:
    """Per layer of the run with provenance ``attrs``: its own profile (an emulator's), else the
    bench file's ``twin:`` for its device, else ``profile`` (--profile); HwloopError when none."""
    devices = attrs.get("devices")
    if not devices:
        raise HwloopError("the run's provenance has no 'devices': give --profile")
    bench = (attrs.get("bench") or {}).get("devices") or {}
    given = load_profile(profile) if profile is not None else None
    out = []
    for k, dev in enumerate(devices):
        name = str(dev.get("origin") or "").rpartition("devices: ")[2] or None
        own, twin = dev.get("profile"), (bench.get(name) or {}).get("twin") if name else None
        if own == "ideal":
            prof, how = ideal_profile(), "ideal"
        elif isinstance(own, dict) and "text" in own:
            prof = parse_profile(own["text"], own.get("path") or f"<profile of layer {k}>")
            how = f"profile {prof.name}"
        elif given is not None:
            prof, how = given, f"--profile {profile}"
        elif twin:
            prof, how = load_profile(twin), f"twin {twin}"
        else:
            raise HwloopError(f"layer {k} ran on {dev.get('type', 'a device')}"
                              + (f" {name!r}" if name else "") + " without a profile: give --profile (its "
                              "calibrated profile) or name one with twin: in the bench file")
        place = _placement(dev)
        label = f"{name or dev.get('name') or dev.get('type', 'device')} ({dev.get('type', '?')}, {how}"
        if place:
            label += f"; activation on the {place['activation']}, scale {math.sqrt(place['scale_sq']):.3g}"
        out.append(LayerSource(prof, place, label + ")"))
    return out


def _placement(dev: dict) -> dict | None:
    """The recorded placement with E[S^2] over the measurements (weight scale x input scale)."""
    place = dev.get("placement")
    if not isinstance(place, dict) or "activation" not in place:
        return None
    s_w = float(place.get("scale", 1.0))
    counts = {float(k): int(v) for k, v in ((dev.get("scaling") or {}).get("input_scales") or {}).items()}
    n = sum(counts.values())
    mean_sx2 = sum(s * s * c for s, c in counts.items()) / n if n else 1.0
    return {**place, "scale_sq": s_w * s_w * mean_sx2}


def as_placed(noise, placement: dict | None):
    """A ``LayerNoise`` of the profile, as the chip really added it to the layer (see the module doc)."""
    if not placement:
        return noise
    s2 = float(placement["scale_sq"])
    s = math.sqrt(s2)
    if placement.get("activation") != "host":
        clip = None if noise.clip is None else (noise.clip[0] * s, noise.clip[1] * s)
        return type(noise)(noise.D_A * s2, noise.D_M, noise.D_AC * s2, noise.D_MC, noise.placement,
                           noise.extra * s2, noise.shot * s, noise.read, noise.cols, clip)
    twice = 2.0 if noise.placement == "both" else 1.0    # the chip ran linear: both places are one
    return type(noise)(twice * noise.D_A * s2 + noise.extra * s2, twice * noise.D_M, twice * noise.D_AC * s2,
                       twice * noise.D_MC, "pre", 0.0, noise.shot * s, noise.read, noise.cols, None)
