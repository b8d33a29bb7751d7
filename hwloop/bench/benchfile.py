"""Bench files: which device runs which analog layer (YAML, loaded safely).

Example::

    devices:
      chip:                                  # a chip on a bench controller
        resource: "TCPIP::127.0.0.1::5025::SOCKET"
        timeout_ms: 5000                     # any VisaDevice option
        capacity: [256, 64, 4096, 1000]      # optional: for --dry-run plans without hardware
      twin:
        profile: semenova                    # an emulator (no profile: the ideal one)
    default: twin                            # layers not listed (default: the ideal emulator)
    layers:
      0: chip                                # by analog-layer index ...
      fc2: chip                              # ... or by ONNX node name

Errors name the file, the line and the key.  ``plan`` touches no hardware.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..devices import Device, Emulator
from ..errors import HwloopError
from ..profiles import load_profile
from ..yamlio import LineMap, load_yaml_file
from .driver import ROUND_TRIPS_PER_MEASUREMENT, ROUND_TRIPS_PER_PROGRAMMING, VisaDevice, chunks_for, tiles_for
from .server import ChipSpec

#: VisaDevice keyword options a bench file may set, with their defaults (types are checked against them)
VISA_OPTIONS = {k: p.default for k, p in inspect.signature(VisaDevice.__init__).parameters.items()
                if p.kind is p.KEYWORD_ONLY and k != "link"}
_CAPACITY = ("max_inputs", "max_outputs", "max_batch", "max_repeats")


@dataclass
class DeviceSpec:
    """One named device of a bench file."""

    name: str
    line: int
    resource: str | None = None               # a chip when set
    profile: str | None = None                # an emulator's profile (None: ideal)
    options: dict = field(default_factory=dict)
    capacity: tuple[int, int, int, int] | None = None

    @property
    def kind(self) -> str:
        return "chip" if self.resource else "emulator"


@dataclass
class Bench:
    """A loaded bench file: devices by name, layer -> device, a default device."""

    path: Path
    devices_spec: dict[str, DeviceSpec]
    layers_spec: dict[int | str, tuple[str, int]]   # layer index or name -> (device name, line)
    default: str | None = None

    def _where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def assignment(self, model) -> dict[int, str | None]:
        """Layer index -> device name (None: the ideal emulator), checking every mapping against the model."""
        by_name = {L.name: L.index for L in model.layers}
        out: dict[int, str | None] = {L.index: self.default for L in model.layers}
        seen: dict[int, tuple[str, int]] = {}
        for key, (dev, line) in self.layers_spec.items():
            if isinstance(key, int):
                if not 0 <= key < len(model.layers):
                    raise HwloopError(f"{self._where(line)}: layers: {key}: no analog layer {key} in "
                                      f"{model.path.name} (it has 0..{len(model.layers) - 1})")
                index = key
            elif key in by_name:
                index = by_name[key]
            else:
                raise HwloopError(f"{self._where(line)}: layers: {key!r}: no analog layer of that name in "
                                  f"{model.path.name} (names: {', '.join(by_name)})")
            if index in seen:
                raise HwloopError(f"{self._where(line)}: layers: {key!r}: layer {index} is mapped twice "
                                  f"(also by {seen[index][0]!r} on line {seen[index][1]})")
            seen[index] = (key, line)
            out[index] = dev
        return out

    def devices(self, model) -> dict[int, Device]:
        """Connect to the chips and build the emulators: one Device per analog layer."""
        made: dict[str, Device] = {}
        profiles: dict[str, object] = {}
        out: dict[int, Device] = {}
        try:
            for index, name in self.assignment(model).items():
                spec = self.devices_spec.get(name) if name else None
                if spec is None or spec.kind == "emulator":
                    prof = spec.profile if spec else None
                    if prof and prof not in profiles:
                        profiles[prof] = load_profile(prof)
                    out[index] = Emulator(profiles.get(prof), name=name or "emulator")
                elif name in made:
                    out[index] = made[name].sibling()
                else:
                    try:
                        made[name] = out[index] = VisaDevice(spec.resource, **spec.options)
                    except HwloopError as e:
                        raise HwloopError(f"{self._where(spec.line)}: device {name!r}: {e}") from None
        except BaseException:
            for dev in out.values():
                dev.close()
            raise
        return out

    def plan(self, model, n_samples: int, batch_size: int, repeats: int) -> str:
        """What a run would do (layers, devices, tiles, batches, round trips), touching no hardware."""
        n_batches = -(-n_samples // batch_size)
        assigned = self.assignment(model)
        shared = self.shared_chips(model)
        lines = [f"bench {self.path}: {len(model.layers)} analog layers, {n_samples} samples in {n_batches} "
                 f"batches of {batch_size}, {repeats} repeats"]
        total = 0
        for L in model.layers:
            name = assigned[L.index]
            spec = self.devices_spec.get(name) if name else None
            head = f"  layer {L.index} {L.name!r} ({L.n_out}x{L.n_in}, {L.activation}) -> "
            if spec is None or spec.kind == "emulator":
                lines.append(head + f"emulator {name or '(default)'} profile {spec.profile if spec and spec.profile else 'ideal'}")
                continue
            cap = spec.capacity or tuple(getattr(ChipSpec(), k) for k in _CAPACITY)
            tiles = tiles_for(L.n_out, L.n_in, cap[1], cap[0])
            rows, k = (batch_size, repeats) if L.index == 0 else (batch_size * repeats, 1)
            meas = sum(len(chunks_for(rows, k, t.rows.stop - t.rows.start, cap[2], cap[3],
                                      spec.options.get("max_block_bytes", VISA_OPTIONS["max_block_bytes"])))
                       for t in tiles)
            reprogram = len(tiles) > 1 or name in shared
            per_batch = meas * ROUND_TRIPS_PER_MEASUREMENT + (len(tiles) * ROUND_TRIPS_PER_PROGRAMMING if reprogram else 0)
            layer_total = per_batch * n_batches + (0 if reprogram else ROUND_TRIPS_PER_PROGRAMMING)
            total += layer_total
            lines.append(
                head + f"chip {name} at {spec.resource}: array {cap[0]}x{cap[1]}"
                + ("" if spec.capacity else " (assumed; declare capacity: to be sure)")
                + f", {len(tiles)} tile(s) ({math.ceil(L.n_out / cap[1])}x{math.ceil(L.n_in / cap[0])})"
                + (", bias+activation on the host" if len(tiles) > 1 else "")
                + f", {meas} measurement(s) per batch, {per_batch} round trips per batch, {layer_total} in all")
        lines.append(f"  round trips to chips: {total}")
        if self.pipelined(model):
            lines.append("  schedule: pipelined (each layer's device works on the next batch while the "
                         "following layer's takes this one)")
        else:
            lines.append("  schedule: one batch at a time through every layer"
                         + (f" (chip {', '.join(shared)} serves several layers)" if shared else ""))
        return "\n".join(lines)

    def shared_chips(self, model) -> list[str]:
        """Chips that serve more than one layer (reprogrammed as the batches go through)."""
        chips = [d for d in self.assignment(model).values() if d and self.devices_spec[d].kind == "chip"]
        return sorted({d for d in chips if chips.count(d) > 1})

    def pipelined(self, model) -> bool:
        """Whether ``run_model`` will pipeline these devices: a chip is used, and none is shared."""
        uses_chip = any(d and self.devices_spec[d].kind == "chip" for d in self.assignment(model).values())
        return uses_chip and not self.shared_chips(model)

    def describe(self) -> dict:
        """Provenance: the devices and the mapping as written."""
        return {"bench": str(self.path),
                "devices": {n: {"kind": s.kind, "resource": s.resource, "profile": s.profile,
                                "options": s.options} for n, s in self.devices_spec.items()},
                "layers": {str(k): v[0] for k, v in self.layers_spec.items()}, "default": self.default}


def load_bench(path: str | Path) -> Bench:
    """Read and check a bench file; raise HwloopError ``FILE:LINE: key: problem`` on the first problem."""
    path = Path(path)
    data = load_yaml_file(path, "bench file")
    if not isinstance(data, LineMap):
        raise HwloopError(f"{path}:1: a bench file is a mapping with devices:, layers: and default:")

    def fail(m: LineMap, key, msg: str):
        raise HwloopError(f"{path}:{m.line_of(key)}: {key}: {msg}")

    for key in data:
        if key not in ("devices", "layers", "default"):
            fail(data, key, "unknown key (known: devices, layers, default)")
    devs = data.get("devices")
    if not isinstance(devs, LineMap) or not devs:
        raise HwloopError(f"{path}:{data.lines.get('devices', 1)}: devices: a mapping of device names is required")
    specs = {str(name): _device(path, devs, name) for name in devs}
    default = data.get("default")
    if default is not None and default not in specs:
        fail(data, "default", f"unknown device {default!r} (devices: {', '.join(specs)})")
    layers = data.get("layers") or LineMap()
    if not isinstance(layers, LineMap):
        fail(data, "layers", "a mapping of layer index or name -> device name")
    mapping: dict[int | str, tuple[str, int]] = {}
    for key, dev in layers.items():
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            fail(layers, key, "a layer is named by its analog-layer index or its ONNX node name")
        if dev not in specs:
            fail(layers, key, f"unknown device {dev!r} (devices: {', '.join(specs)})")
        mapping[key] = (dev, layers.lines[key])
    return Bench(path, specs, mapping, default)


def _device(path: Path, devs: LineMap, name) -> DeviceSpec:
    d = devs[name]
    line = devs.lines[name]
    where = f"{path}:{line}: devices: {name}"
    if not isinstance(d, LineMap):
        raise HwloopError(f"{where}: a device is a mapping (resource: ... for a chip, profile: ... for an emulator)")
    spec = DeviceSpec(str(name), line)

    def bad(key, msg):
        raise HwloopError(f"{path}:{d.line_of(key)}: devices: {name}: {key}: {msg}")

    if "resource" in d and "profile" in d:
        bad("profile", "a device is a chip (resource:) or an emulator (profile:), not both")
    for key, value in d.items():
        if key == "resource":
            if not isinstance(value, str) or "::" not in value:
                bad(key, f"{value!r} is not a VISA resource name such as TCPIP::127.0.0.1::5025::SOCKET")
            spec.resource = value
        elif key == "profile":
            if value is not None and not isinstance(value, str):
                bad(key, "a profile name or path")
            spec.profile = value
        elif key == "capacity" and "resource" in d:
            if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) and v > 0 for v in value)):
                bad(key, "four positive integers: [max_inputs, max_outputs, max_batch, max_repeats]")
            spec.capacity = tuple(value)
        elif key in VISA_OPTIONS and "resource" in d:
            want = type(VISA_OPTIONS[key])
            ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                bad(key, f"expected {want.__name__}, got {value!r}")
            spec.options[key] = value
        else:
            known = ["resource", "capacity", *VISA_OPTIONS] if "resource" in d else ["profile"]
            bad(key, f"unknown key (known for a{' chip' if 'resource' in d else 'n emulator'}: {', '.join(known)})")
    if spec.profile:
        try:
            load_profile(spec.profile)
        except HwloopError as e:
            bad("profile", str(e))
    return spec
