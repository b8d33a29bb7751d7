"""Bench files: which device runs which analog layer (YAML, loaded safely).

Example::

    devices:
      chip:                                  # a chip on a bench controller
        resource: "TCPIP::127.0.0.1::5025::SOCKET"
        timeout_ms: 5000                     # any VisaDevice option
        capacity: [256, 64, 4096, 1000]      # optional: for --dry-run plans without hardware
        twin: chip.yaml                      # optional: its calibrated profile (analyze --predict, validate)
      optical:                               # a plug-in: any hwloop.devices.Device (docs/own-chip.md)
        type: mylab.chips:OpticalChip        # module:Class, or a name from entry-point group hwloop.devices
        port: 3                              # keyword arguments of the class
      twin:
        profile: semenova                    # an emulator (no profile: the ideal one)
    default: twin                            # layers not listed (default: the ideal emulator)
    layers:
      0: chip                                # by analog-layer index ...
      fc2: chip                              # ... or by ONNX node name

Errors name the file, the line and the key.  ``plan`` touches no hardware.
``open_device(BENCH, NAME)`` builds one named device: every command that
takes ``--bench`` goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..devices import Device, Emulator
from ..errors import HwloopError
from ..profiles import load_profile
from ..yamlio import LineMap, load_yaml_file
from . import plugins
from .driver import VisaDevice
from .settings import DEFAULTS
from .visalib import library_spec

#: VisaDevice keyword options a bench file may set, with their defaults (types are checked against them)
VISA_OPTIONS = DEFAULTS


@dataclass
class DeviceSpec:
    """One named device of a bench file."""

    name: str
    line: int
    resource: str | None = None               # a chip when set
    profile: str | None = None                # an emulator's profile (None: ideal)
    options: dict = field(default_factory=dict)
    capacity: tuple[int, int, int, int] | None = None
    cls: type | None = None                   # a plug-in device class (type: ...)
    type_name: str | None = None
    twin: str | None = None                   # the calibrated profile of a chip or plug-in (twin: ...)
    capabilities: dict | None = None          # what a plug-in does not report, for calibration (capabilities:)
    path: Path | None = None                  # the bench file

    @property
    def where(self) -> str:
        """``FILE:LINE: devices: NAME``, the prefix of errors about this device."""
        return f"{self.path}:{self.line}: devices: {self.name}"

    @property
    def kind(self) -> str:
        return "plugin" if self.cls is not None else "chip" if self.resource else "emulator"

    def build(self) -> Device:
        """Make the device (connect to a chip, build an emulator, construct a plug-in)."""
        if self.kind == "emulator":
            dev: Device = Emulator(load_profile(self.profile) if self.profile else None, name=self.name)
        else:
            cls, args = (VisaDevice, {"resource": self.resource}) if self.kind == "chip" else (self.cls, {})
            try:
                dev = plugins.instantiate(cls, {**args, **self.options})
            except plugins.PluginError as e:
                raise HwloopError(f"{self.path}:{self.line}: device {self.name!r}: {e}") from None
        dev.origin = self.where
        return dev


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

    def only_device(self) -> str:
        """The name of the one device of a file that declares one (else ask for --device)."""
        if len(self.devices_spec) != 1:
            raise HwloopError(f"{self.path}: declares {len(self.devices_spec)} devices "
                              f"({', '.join(self.devices_spec)}): name one with --device")
        return next(iter(self.devices_spec))

    def open(self, name: str) -> Device:
        """The device called ``name`` in this bench file, ready to program (the caller closes it)."""
        if name not in self.devices_spec:
            raise HwloopError(f"{self.path}: no device {name!r} (devices: {', '.join(self.devices_spec)})")
        return self.devices_spec[name].build()

    def devices(self, model, only: str | None = None) -> dict[int, Device]:
        """One Device per analog layer, as the file maps them (``only``: every layer on that device).

        A device named for several layers is built once; its ``sibling()`` serves the other layers
        when it has one (a chip's second layer on the same connection), else each layer gets a
        ``plugins.SharedDevice`` view of the one instance (reprogrammed as the layers take turns).
        """
        made: dict[str, Device] = {}
        out: dict[int, Device] = {}
        assigned = {L.index: only for L in model.layers} if only else self.assignment(model)
        serves = {n: list(assigned.values()).count(n) for n in set(assigned.values())}
        groups: dict[str, dict] = {}
        try:
            for index, name in assigned.items():
                if name is None:
                    out[index] = Emulator(None, name="emulator")
                    continue
                first = name not in made
                if first:
                    made[name] = self.open(name)
                dev = made[name]
                if self.devices_spec[name].kind == "emulator":
                    out[index] = dev if first else self.open(name)
                elif hasattr(dev, "sibling"):
                    out[index] = dev if first else dev.sibling()
                elif serves[name] > 1:     # one instance, several layers: a view per layer
                    out[index] = plugins.SharedDevice(dev, groups.setdefault(name, {}))
                else:
                    out[index] = dev
        except BaseException:
            for dev in out.values():
                dev.close()
            raise
        return out

    def plan(self, model, n_samples: int, batch_size: int, repeats: int) -> str:
        """What a run would do (layers, devices, tiles, batches, round trips), touching no hardware."""
        from .dryrun import plan_text

        return plan_text(self, model, n_samples, batch_size, repeats)

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
                "devices": {n: {"kind": s.kind, "resource": s.resource, "profile": s.profile, "type": s.type_name,
                                "twin": s.twin, "options": _jsonable(s.options)}
                            for n, s in self.devices_spec.items()},
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
        if key not in ("devices", "layers", "default", "visa_library"):
            fail(data, key, "unknown key (known: devices, layers, default, visa_library)")
    devs = data.get("devices")
    if not isinstance(devs, LineMap) or not devs:
        raise HwloopError(f"{path}:{data.lines.get('devices', 1)}: devices: a mapping of device names is required")
    specs = {str(name): _device(path, devs, name) for name in devs}
    if "visa_library" in data:
        if not isinstance(data["visa_library"], str):
            fail(data, "visa_library", '"@py", "@ivi", "@sim", "FILE.yaml@sim" or the path of a VISA library')
        for spec in specs.values():     # the file's default, for every device that takes one
            takes = spec.kind == "chip" or (spec.kind == "plugin" and not plugins.keyword_problems(
                spec.cls, ["visa_library"]).get("visa_library"))
            if takes and "visa_library" not in spec.options:
                spec.options["visa_library"] = library_spec(data["visa_library"], path.parent)
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


def _jsonable(options: dict) -> dict:
    """Plug-in keyword arguments as provenance: plain values as they are, anything else as its repr."""
    return {k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)
            for k, v in options.items()}


def _device(path: Path, devs: LineMap, name) -> DeviceSpec:
    d = devs[name]
    line = devs.lines[name]
    where = f"{path}:{line}: devices: {name}"
    if not isinstance(d, LineMap):
        raise HwloopError(f"{where}: a device is a mapping (resource: ... for a chip, profile: ... for an "
                          "emulator, type: module:Class for a plug-in)")
    spec = DeviceSpec(str(name), line, path=path)

    def bad(key, msg):
        raise HwloopError(f"{path}:{d.line_of(key)}: devices: {name}: {key}: {msg}")

    kind = "chip" if "resource" in d else "emulator"
    if "type" in d:
        try:
            cls = plugins.resolve(d["type"])
        except plugins.PluginError as e:
            bad("type", str(e))
        spec.type_name = d["type"]
        kind = "chip" if cls is VisaDevice else "emulator" if cls is Emulator else "plugin"
        if kind == "plugin":
            spec.cls = cls
    if kind == "plugin":
        _plugin_keys(spec, d, bad)
    else:
        _builtin_keys(spec, d, kind, bad)
    for key in ("profile", "twin"):
        value = getattr(spec, key)
        if value:
            local = path.parent / value
            if local.is_file():
                value = str(local)
                setattr(spec, key, value)
            try:
                load_profile(value)
            except HwloopError as e:
                bad(key, str(e))
    return spec


def _plugin_keys(spec: DeviceSpec, d: LineMap, bad) -> None:
    """A plug-in: ``twin:`` and ``capabilities:`` are hwloop's, every other key is a keyword of the class."""
    kwargs = {k: v for k, v in d.items() if k not in ("type", "twin", "capabilities")}
    if "twin" in d:
        if not isinstance(d["twin"], str):
            bad("twin", "the calibrated profile of this device (a path or a profile name)")
        spec.twin = d["twin"]
    if "capabilities" in d:
        if not isinstance(d["capabilities"], dict):
            bad("capabilities", "a mapping of what calibration must know (max_inputs, max_outputs, input_range, "
                                "weight_max, output_range, ...; see hwloop.calibration.ChipInfo)")
        spec.capabilities = dict(d["capabilities"])
    for key, problem in plugins.keyword_problems(spec.cls, kwargs).items():
        bad("type" if key is None else key, problem)
    check = getattr(spec.cls, "check_options", None)     # optional: the class checks its arguments early
    for key, problem in (check(**kwargs) if callable(check) else {}).items():
        bad(key if key in d else "type", problem)
    if isinstance(kwargs.get("visa_library"), str):
        kwargs["visa_library"] = library_spec(kwargs["visa_library"], spec.path.parent)
    spec.options = kwargs


def _builtin_keys(spec: DeviceSpec, d: LineMap, kind: str, bad) -> None:
    """A chip on an ANB controller (resource: ... and VisaDevice options) or an emulator (profile: ...)."""
    if "resource" in d and "profile" in d:
        bad("profile", "a device is a chip (resource:) or an emulator (profile:), not both")
    chip = kind == "chip"
    if chip and "resource" not in d:
        bad("type", "a VISA chip needs resource: (e.g. TCPIP::127.0.0.1::5025::SOCKET)")
    for key, value in d.items():
        if key == "type":
            continue
        if key == "resource":
            if not isinstance(value, str) or "::" not in value:
                bad(key, f"{value!r} is not a VISA resource name such as TCPIP::127.0.0.1::5025::SOCKET")
            spec.resource = value
        elif key == "profile" and not chip:
            if value is not None and not isinstance(value, str):
                bad(key, "a profile name or path")
            spec.profile = value
        elif key == "twin" and chip:
            if not isinstance(value, str):
                bad(key, "the calibrated profile of this chip (a path or a profile name)")
            spec.twin = value
        elif key == "capacity" and chip:
            if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) and v > 0 for v in value)):
                bad(key, "four positive integers: [max_inputs, max_outputs, max_batch, max_repeats]")
            spec.capacity = tuple(value)
        elif key in VISA_OPTIONS and chip:
            want = type(VISA_OPTIONS[key])
            ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                bad(key, f"expected {want.__name__}, got {value!r}")
            spec.options[key] = library_spec(value, spec.path.parent) if key == "visa_library" else value
        else:
            known = ["resource", "capacity", "twin", *VISA_OPTIONS] if chip else ["profile"]
            bad(key, f"unknown key (known for a{' chip' if chip else 'n emulator'}: {', '.join(known)})")


def _select(path: str | Path | None, name: str | None, resource: str | None,
            overrides: dict) -> tuple[Bench, str]:
    """A bench file and one device name in it; ``--resource`` is a bench of one chip called 'chip'."""
    if resource is not None and path is not None:
        raise HwloopError("give --bench BENCH.yaml (with --device) or --resource, not both")
    if resource is not None:
        bench = Bench(Path("--resource"), {"chip": DeviceSpec("chip", 0, resource=resource,
                                                             path=Path("--resource"))}, {})
        name = "chip"
    elif path is not None:
        bench = load_bench(path)
        name = name or bench.only_device()
        if name not in bench.devices_spec:
            raise HwloopError(f"{path}: no device {name!r} (devices: {', '.join(bench.devices_spec)})")
    else:
        raise HwloopError("name the device: --bench BENCH.yaml [--device NAME] or --resource VISA-RESOURCE")
    spec = bench.devices_spec[name]
    for key, value in overrides.items():        # e.g. on_clip='warn', where the device takes it
        if spec.kind == "chip" and key in VISA_OPTIONS or spec.kind == "plugin" and \
                not plugins.keyword_problems(spec.cls, [key]).get(key):
            spec.options.setdefault(key, value)
    return bench, name


def open_device(path: str | Path | None = None, name: str | None = None, *, resource: str | None = None,
                **overrides) -> Device:
    """The one way commands get a device: ``name`` of bench file ``path`` (the only one when the file
    declares one), or a chip at VISA ``resource``; ``overrides`` are defaults for keywords it takes."""
    bench, name = _select(path, name, resource, overrides)
    return bench.open(name)


def layer_devices(model, path: str | Path | None = None, name: str | None = None, *,
                  resource: str | None = None, **overrides) -> dict[int, Device]:
    """Every analog layer of ``model`` on one device (selected as by ``open_device``): a chip's layers
    share its connection (``sibling()``), a plug-in without one serves every layer itself."""
    bench, name = _select(path, name, resource, overrides)
    return bench.devices(model, only=name)
