"""Calibration: measure a chip, fit its noise and non-idealities, write the profile of its twin.

Flow (one way): ``plan`` (probes designed from the chip's capacity and ranges)
-> ``measure`` (drive the chip, record every block in a crash-safe store) ->
``fit`` (estimators with uncertainties) -> ``profile_out`` (a device profile
with provenance); ``validate`` runs a model on the chip and on its twin.
See docs/calibration.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

from ..errors import HwloopError
from ..lazy import lazy_attributes
from .plan import DEFAULT_BUDGET, ChipInfo, Plan, design_plan

__all__ = ["calibrate", "CalibrationSettings", "refit", "open_chip", "chip_from_visa", "chip_from_device",
           "CAPABILITY_DEFAULTS", "fit_all", "design_plan", "ChipInfo", "Plan",
           "Chip", "Measurements", "CalibrationStore", "CalibrationFit", "DEFAULT_BUDGET"]

# imported on first use: ``measure`` pulls in zarr, and the command line needs only ``plan``
__getattr__, __dir__ = lazy_attributes(__name__, globals(), {
    "CalibrationFit": "fit", "fit_all": "fit", "CalibrationStore": "measure", "Chip": "measure",
    "Measurements": "measure"})


def chip_from_visa(device) -> Chip:
    """Wrap a connected ``hwloop.bench.VisaDevice``: its reported capacity and ranges, its thermometer."""
    from ..bench import scpi
    from .measure import Chip

    lim = device.limits
    names = {scpi.short(k).upper(): v for k, v in scpi.ACTIVATIONS.items()}
    info = ChipInfo(
        idn=device.link.idn, max_inputs=int(lim["max_inputs"]), max_outputs=int(lim["max_outputs"]),
        max_batch=int(lim["max_batch"]), max_repeats=int(lim["max_repeats"]),
        input_range=tuple(float(v) for v in lim["input_range"]), weight_max=float(lim["weight_range"]),
        bias_max=float(lim["bias_range"]), output_range=tuple(float(v) for v in lim["output_range"]),
        output_bits=int(lim["output_bits"]),
        activations=tuple(names[a] for a in lim["activations"] if a in names))
    return Chip(device, info, lambda: float(device.temperature()))


#: what a calibration assumes when neither the device nor the caller states it (the rest must be stated)
CAPABILITY_DEFAULTS = {"max_batch": 1024, "max_repeats": 1000, "bias_max": 0.0, "output_bits": 0,
                       "activations": ("linear",)}
_REQUIRED = ("max_inputs", "max_outputs", "input_range", "weight_max", "output_range")
_INTS = ("max_inputs", "max_outputs", "max_batch", "max_repeats", "output_bits")


def chip_from_device(device, capabilities: Mapping | None = None) -> Chip:
    """Wrap any ``hwloop.devices.Device`` for calibration (a plug-in, an emulator-backed class, a VISA chip).

    The calibration only programs the device and runs it (``program``/``run``);
    what it must know about the chip (``ChipInfo``: array size, input, weight
    and output ranges, ADC bits, activations, batch and repetition limits) comes
    from the device where it reports it, a ``capabilities`` attribute or method
    (a mapping with ``ChipInfo``'s field names), overridden by ``capabilities``
    given here (a bench file's settings), then ``CAPABILITY_DEFAULTS``.  A
    ``VisaDevice`` reports everything over SCPI.  The temperature comes from
    ``device.temperature()`` when the device has one.
    """
    from .measure import Chip

    if hasattr(device, "limits") and hasattr(device, "link"):   # a VisaDevice: SCPI says it all
        visa = chip_from_visa(device)
        if not capabilities:
            return visa
        reported = visa.info.to_dict()
    else:
        reported = getattr(device, "capabilities", None)
        reported = reported() if callable(reported) else reported
    where = getattr(device, "origin", None) or type(device).__name__
    merged = {**CAPABILITY_DEFAULTS, **dict(reported or {}), **dict(capabilities or {})}
    known = set(ChipInfo.__dataclass_fields__)
    unknown = sorted(set(merged) - known - {"idn"})
    if unknown:
        raise HwloopError(f"{where}: unknown capabilities {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    missing = [k for k in _REQUIRED if k not in merged]
    if missing:
        raise HwloopError(f"{where}: calibration needs the chip's {', '.join(missing)}; the device does not report "
                          "them (a 'capabilities' mapping), so give them (e.g. in the bench file)")
    merged.setdefault("idn", str(device.describe().get("idn") or f"{type(device).__name__},,0,"))
    try:
        values = {k: int(v) if k in _INTS else float(v) if k in ("weight_max", "bias_max")
                  else tuple(float(x) for x in v) if k.endswith("_range") else v for k, v in merged.items()}
        info = ChipInfo(**{**values, "idn": str(merged["idn"]), "activations": tuple(map(str, merged["activations"]))})
    except (TypeError, ValueError) as e:
        raise HwloopError(f"{where}: capabilities: {e}") from None
    temperature = getattr(device, "temperature", None)
    return Chip(device, info, (lambda: float(temperature())) if callable(temperature) else (lambda: float("nan")))


def open_chip(resource: str | None = None, bench: str | None = None, device: str | None = None,
              **options) -> Chip:
    """Connect to a chip by VISA resource, or by a device name of a bench file."""
    from ..bench import VisaDevice, load_bench

    if bench:
        b = load_bench(bench)
        if device not in b.devices_spec:
            raise HwloopError(f"{bench}: no device {device!r} (devices: {', '.join(b.devices_spec)})")
        spec = b.devices_spec[device]
        if not spec.resource:
            raise HwloopError(f"{bench}:{spec.line}: devices.{device}: an emulator, not a chip; "
                              "calibration needs a device with a 'resource'")
        resource, options = spec.resource, {**spec.options, **options}
    if not resource:
        raise HwloopError("calibrate: name the chip with --resource or with --bench and --device")
    options.setdefault("on_clip", "warn")   # a clipped level is dropped by the fits, not fatal
    return chip_from_visa(VisaDevice(resource, **options))


@dataclass(frozen=True)
class CalibrationSettings:
    """How ``calibrate`` measures: the store, the budget of evaluations, the seed of the plan, whether to
    continue (``resume``) or replace (``overwrite``) a store, the profile's ``name``, a ``progress(done, total)``
    callback and, for tests, ``stop_after`` newly measured blocks."""

    store: str | Path
    budget: int = DEFAULT_BUDGET
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    name: str | None = None
    progress: Callable[[int, int], None] | None = None
    stop_after: int | None = None


def calibrate(chip: Chip, out: str | Path, settings: CalibrationSettings | None = None, **options):
    """Plan, measure (resumably, into the store), fit and write the profile to ``out``.

    ``options`` are ``CalibrationSettings``' fields as keywords (``store=...``, ``budget=...``), on their
    own or replacing those of ``settings``.  Returns ``(profile, fit, measurements)``; with
    ``stop_after`` (tests) it may return before the plan is complete, writing no profile:
    ``(None, None, measurements)``.
    """
    s = replace(settings, **options) if settings is not None else CalibrationSettings(**options)
    from ..files import store_lock
    from .measure import CalibrationStore, measure

    plan = design_plan(chip.info, s.budget, s.seed)
    with store_lock(s.store):      # one writer per calibration store
        if s.resume and Path(s.store).exists():
            cal = CalibrationStore.resume(s.store, plan)
        else:
            cal = CalibrationStore.create(s.store, plan, {"idn": chip.info.idn}, overwrite=s.overwrite)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*clipped.*")
            meas = measure(chip, cal, progress=s.progress, stop_after=s.stop_after)
    if not cal.complete:
        return None, None, meas
    return (*_fit_and_write(meas, out, s.store, s.name), meas)


def refit(store: str | Path, out: str | Path, name: str | None = None):
    """Fit a completed calibration store again (no chip needed), with its ``--target-precision`` extension
    stages (their completed blocks); returns ``(profile, fit)``."""
    from .measure import CalibrationStore
    from .precision import with_stages

    cal = CalibrationStore(store)
    if not cal.complete:
        raise HwloopError(f"{store}: calibration incomplete ({int(cal.done.sum())} of {len(cal.done)} blocks); "
                          "finish it with --resume first")
    return _fit_and_write(with_stages(cal.measurements(), store), out, store, name)


def _fit_and_write(meas: Measurements, out, store, name):
    from .fit import fit_all
    from .profile_out import write_profile

    fit = fit_all(meas)
    prof = write_profile(fit, meas, out, name=name, store_path=str(store))
    return prof, fit
