"""A loaded profile: finding it by name, parsing, merging per-layer overrides, writing it back.

``Profile.for_layer`` merges the profile-wide sections with a layer's
overrides (index first, then name) into ``LayerSettings``; noise written as
standard deviations (``noise: {units: std}``) is squared here, so settings
always hold variances.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import HwloopError
from ..files import atomic_path
from ..yamlio import load_yaml
from .settings import INTENSITIES, SECTIONS, LayerSettings, layer_settings
from .validate import plain, validate


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
        merged = {s: _as_variances(self.data.get(s, {})) for s in SECTIONS}
        layers = self.data.get("layers") or {}
        for key in (index, str(index) if index is not None else None, name):
            if key is not None and key in layers:
                for s, vals in layers[key].items():
                    merged[s] = {**merged[s], **_as_variances(vals)}
        return layer_settings(merged)

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
                "sha256": self.sha256, "provenance": plain(self.provenance), "text": self.text}


def _as_variances(section: dict) -> dict:
    """Square noise intensities written as standard deviations."""
    vals = dict(section)
    if vals.pop("units", "variance") == "std":
        for k in INTENSITIES:
            if k in vals:
                vals[k] = float(vals[k]) ** 2
    return vals


def parse_profile(text: str, path: Path | str | None = None) -> Profile:
    """Parse and validate profile text; raise ``HwloopError`` ('file:line: key: problem') on the first problem."""
    label = str(path) if path else "<profile>"
    data = load_yaml(text, label)
    if not isinstance(data, dict):
        raise HwloopError(f"{label}:1: a profile must be a mapping of keys (got {type(data).__name__})")
    validate(data, label)
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
    dirs.append(Path(__file__).resolve().parents[2] / "device_profiles")
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
        data = _to_builtin(plain(profile.data if isinstance(profile, Profile) else profile))
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


def ideal_profile() -> Profile:
    """An in-memory ideal profile (the same as ``device_profiles/ideal.yaml`` minus comments)."""
    return parse_profile("version: 1\nprovenance: {source: hand-written}\n", None)
