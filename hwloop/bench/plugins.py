"""Device plug-ins: the ``type:`` of a bench-file device, resolved to a ``Device`` class.

A bench file may name any class that implements ``hwloop.devices.Device``
(the contract in ``hwloop/devices/base.py``, see docs/own-chip.md), in the
QCoDeS-station way::

    devices:
      chip: {type: mylab.chips:OpticalChip, port: 3}   # module:Class, then keyword arguments
      sdk:  {type: optical, serial: A17}               # a name from the entry-point group hwloop.devices

A short name is looked up among hwloop's own devices (``BUILTIN``) and then
among the entry points that installed packages register in the group
``hwloop.devices`` (``[project.entry-points."hwloop.devices"] optical =
"mylab.chips:OpticalChip"``).  Every failure is a ``PluginError`` whose text
the bench loader prefixes with file, line and key.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points

from ..devices.base import DEVICE_API_VERSION, Device
from ..errors import HwloopError

#: the entry-point group a package registers its devices in
GROUP = "hwloop.devices"

#: hwloop's own devices by short name
BUILTIN = {
    "visa": "hwloop.bench.driver:VisaDevice",
    "emulator": "hwloop.devices.emulator:Emulator",
    "fixed-weight": "hwloop.bench.fixedchip:FixedWeightChip",
    "described": "hwloop.bench.described:DescribedDevice",
}


class PluginError(Exception):
    """A ``type:`` that cannot be used; the text says why (the caller adds file, line and key)."""


def registered() -> dict[str, str]:
    """Short name -> ``module:Class``: hwloop's own, then those of installed packages."""
    out = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def resolve(type_name: str) -> type[Device]:
    """The Device class named by ``module:Class`` or by a registered short name."""
    if not isinstance(type_name, str) or not type_name.strip():
        raise PluginError("a class as module:Class, or a name registered under the entry-point group "
                          f"{GROUP}")
    target = type_name
    if ":" not in type_name:
        names = registered()
        if type_name not in names:
            raise PluginError(f"no device type {type_name!r} (known: {', '.join(sorted(names))}; or give "
                              "module:Class)")
        target = names[type_name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:   # ImportError, or whatever the module raises while importing
        raise PluginError(f"cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    cls = module
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise PluginError(f"module {module_name!r} has no {attr!r}")
    if not (inspect.isclass(cls) and issubclass(cls, Device)):
        raise PluginError(f"{target} is not a hwloop Device (subclass hwloop.devices.Device, "
                          "see docs/own-chip.md)")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise PluginError(f"{target} does not implement {missing} of the Device contract")
    if getattr(cls, "api_version", 1) > DEVICE_API_VERSION:
        raise PluginError(f"{target} is written for device API {cls.api_version}; this hwloop implements "
                          f"version {DEVICE_API_VERSION}")
    return cls


def keyword_problems(cls: type, keys) -> dict[str, str]:
    """key -> what is wrong with passing it to ``cls(...)`` (empty when all are accepted).

    The key ``None`` reports required parameters that are missing.
    """
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        takes = None
    else:
        takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out = {}
    for k in keys:
        if takes is not None and k not in takes:
            out[k] = f"{cls.__name__} takes no keyword {k!r} (it takes: {', '.join(takes) or 'none'})"
    missing = [n for n, p in params.items() if p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in keys]
    if missing:
        out[None] = f"{cls.__name__} needs {', '.join(missing)}"
    return out


def instantiate(cls: type[Device], kwargs: dict) -> Device:
    """``cls(**kwargs)``; whatever it raises becomes a PluginError naming the class."""
    try:
        dev = cls(**kwargs)
    except HwloopError as e:      # already a clear message (e.g. an unreachable controller)
        raise PluginError(str(e)) from None
    except Exception as e:
        raise PluginError(f"{cls.__name__}(...) failed: {type(e).__name__}: {e}") from None
    return dev


class SharedDevice(Device):
    """One layer's view of a device instance that serves several layers (a plug-in without ``sibling()``).

    The instance holds one layer at a time: a view reprograms it before running when another view
    programmed it last, so callers (the runner, wrappers of the check gate) may treat each view as a
    device of its own.  The instance is closed with the last view.
    """

    def __init__(self, inner: Device, group: dict):
        self.inner, self._group = inner, group          # group: {"holder": view or None, "open": count}
        group["open"] = group.get("open", 0) + 1
        self.remote, self.origin = inner.remote, inner.origin
        self.layer, self._seed = None, 0

    @property
    def hardware(self) -> object:
        return self.inner.hardware

    def program(self, layer, *, seed: int = 0) -> None:
        self.inner.program(layer, seed=seed)
        self.layer, self._seed, self._group["holder"] = layer, seed, self

    def run(self, x, *, repeats: int, key=()):
        if self._group.get("holder") is not self:
            self.inner.program(self.layer, seed=self._seed)
            self._group["holder"] = self
        return self.inner.run(x, repeats=repeats, key=key)

    def interrupt(self) -> None:
        self.inner.interrupt()

    def describe(self) -> dict:
        return self.inner.describe()

    def close(self) -> None:
        if self._group is not None:
            self._group["open"] -= 1
            if self._group["open"] == 0:
                self.inner.close()
            self._group = None
