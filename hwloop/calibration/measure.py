"""Driving a chip through a calibration plan, and the calibration store the blocks go to.

The store is a Zarr group written the way the run store is (both are
``hwloop.resumable.ZarrStore``s): created aside and renamed into place, one array per measured block, the block's
time and temperature, and a per-block completion marker written last.  A block
without its marker is measured again on resume; a marked block is never
re-measured, so a calibration killed at any moment continues where it stopped,
and ``hwloop calibrate --refit CAL.zarr`` refits without touching the chip.

Layout::

    attrs                         format, plan (chip info, budget, seed), idn, start date, ...
                                  (flat CF-style attributes, nested values as KEY_json: hwloop.cf)
    probe (probe,)                coordinate; every root array has units and long_name
    bookkeeping/done (probe,) int8   1 once block k is complete
    t (probe,), temperature (probe,)   seconds since its layer was programmed; deg C
    session (probe,) int32        which programming of the probe layer measured block k
    blocks/<k>     (repeat, sample, neuron) float32
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from .. import cf
from ..devices.base import Device
from ..errors import HwloopError
from ..resumable import ZarrStore, creating, json_attrs
from .groups import Group, groups
from .plan import ChipInfo, Plan, Probe, plan_attrs, plan_from_attrs

FORMAT = "hwloop-calibration/1"
#: per-block completion markers, in their own group so xarray's root dataset shows only data
DONE = "bookkeeping/done"


@dataclass
class Block:
    """One probe as measured: outputs (repeat, sample, neuron), when, and at what temperature."""

    probe: Probe
    y: np.ndarray
    t: float
    temperature: float
    session: int = 0      # which programming of the probe layer (a chip may redraw static errors at each)


@dataclass
class Measurements:
    """Everything the fits need: the plan and its measured blocks (in plan order)."""

    plan: Plan
    blocks: list[Block]
    attrs: dict = field(default_factory=dict)

    @property
    def evaluations(self) -> int:
        return int(sum(b.y.shape[0] * b.y.shape[1] for b in self.blocks))

    def groups(self, kinds: tuple[str, ...] = ("level",), activation: str | None = "linear") -> list[Group]:
        """Every block's samples pooled by (activation, level, programming session), as the estimators read them."""
        return groups(self, kinds, activation)


@dataclass
class Chip:
    """A device to calibrate plus what it reports about itself."""

    device: Device
    info: ChipInfo
    temperature: Callable[[], float] = lambda: float("nan")


# -- the store ------------------------------------------------------------------------
class CalibrationStore(ZarrStore):
    """Crash-safe, resumable record of one calibration (see the module doc)."""

    KIND = "calibration store"
    NOT_A = "not a calibration store"
    FORMAT = FORMAT
    LEGACY_ATTRS = "hwloop_calibration"
    DONE = DONE
    LEGACY_DONE = "done"       # older stores kept the markers at the root

    def __init__(self, path: str | Path):
        super().__init__(path, mode="r+")
        self.plan = plan_from_attrs(self.attrs["plan"])
        self._check_manifest()

    def _check_manifest(self) -> None:
        """Every array, and the block of every marked probe, must be on disk (not only the markers)."""
        self.require((self.done_name, "t", "temperature", "session", "blocks"), "measure again with --overwrite")
        lost = self.lost(lambda k: [f"blocks/{k}/zarr.json"])
        if lost:
            raise HwloopError(f"{self.path}: damaged calibration store: block {lost[0]} is marked done but "
                              f"missing ({len(lost)} block(s)); measure again with --overwrite")

    @classmethod
    def create(cls, path: str | Path, plan: Plan, attrs: dict, overwrite: bool = False) -> "CalibrationStore":
        """Create an empty store atomically (built in a temporary folder, then renamed into place)."""
        meta = json_attrs(dict(attrs, format=FORMAT, plan=plan_attrs(plan), probes=len(plan.probes)), path)
        with creating(path, overwrite=overwrite,
                      exists="exists (use --resume to continue that calibration or --overwrite)") as tmp:
            root = zarr.open_group(str(tmp), mode="w")
            root.attrs.put(cf.store_attrs(meta))
            n = len(plan.probes)
            for name, dtype, fill in ((DONE, "int8", 0), ("t", "float64", float("nan")),
                                      ("temperature", "float64", float("nan")), ("session", "int32", -1)):
                root.create_array(name, shape=(n,), chunks=(1,), dtype=dtype, fill_value=fill,
                                  dimension_names=("probe",), attributes=cf.var_attrs(cf.CALIBRATION, name))
            root.create_array("probe", data=np.arange(n), chunks=(max(n, 1),), dimension_names=("probe",),
                              attributes=cf.var_attrs(cf.COORDS, "probe"))
            root.create_group("blocks")
        return cls(path)

    @classmethod
    def resume(cls, path: str | Path, plan: Plan) -> "CalibrationStore":
        """Open an existing store for ``plan``; refuse one made for another chip, budget or seed."""
        store = cls(path)
        if store.attrs["plan"] != json_attrs(plan_attrs(plan), path):
            raise HwloopError(f"{path}: made for another plan (chip, budget or seed differ): "
                              f"{store.attrs['plan']} vs {plan_attrs(plan)}")
        return store

    @property
    def done(self) -> np.ndarray:
        return self.marked()

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def write_block(self, k: int, y: np.ndarray, t: float, temperature: float, session: int = 0) -> None:
        """Write block ``k``; its marker goes last, so a kill leaves it recognisably unfinished."""
        y = np.ascontiguousarray(y, np.float32)
        arr = self.root["blocks"].create_array(str(k), shape=y.shape, chunks=y.shape, dtype="float32",
                                               overwrite=True)
        arr[...] = y
        self.root["t"][k] = t
        self.root["temperature"][k] = temperature
        self.root["session"][k] = session
        self.mark_done(k)

    def measurements(self) -> Measurements:
        """The completed blocks, in plan order (all of them once the calibration is complete)."""
        done, t, temp = self.done, self.root["t"][:], self.root["temperature"][:]
        ses = self.root["session"][:]
        blocks = [Block(p, np.asarray(self.root["blocks"][str(p.index)][...]), float(t[p.index]),
                        float(temp[p.index]), int(ses[p.index])) for p in self.plan.probes if done[p.index]]
        return Measurements(self.plan, blocks, dict(self.attrs))


# -- measuring -------------------------------------------------------------------------
def measure(chip: Chip, store: CalibrationStore, progress: Callable[[int, int], None] | None = None,
            stop_after: int | None = None) -> Measurements:
    """Measure every probe of the store's plan not yet marked done; returns all measurements.

    Each probe layer (activation, weight) is programmed once (static errors
    stay put for all its blocks); ``t`` counts seconds from that programming.
    ``stop_after`` ends after that many newly measured blocks (for tests of resuming).
    """
    plan = store.plan
    done = store.done
    todo = [p for p in plan.probes if not done[p.index]]
    measured = 0
    if not store.attrs.get("started"):
        store.set_attrs(started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    t_bench = 0.0
    for key in dict.fromkeys(p.layer_key for p in todo):
        session = int(store.attrs.get("sessions", 0))
        store.set_attrs(sessions=session + 1)   # counted before use: a kill never reuses a session number
        chip.device.program(plan.layer(*key), seed=plan.seed)
        t0 = time.monotonic()
        for p in (q for q in todo if q.layer_key == key):
            if stop_after is not None and measured >= stop_after:
                return store.measurements()
            x = plan.inputs(p.levels, p.commons)
            ts = time.monotonic()
            reprograms = _reprograms(chip.device)
            y = chip.device.run(x, repeats=p.repeats, key=plan.key(p))
            te = time.monotonic()
            if _reprograms(chip.device) != reprograms:  # the driver had to program the chip again (it lost it)
                session = int(store.attrs.get("sessions", 0))
                store.set_attrs(sessions=session + 1)
                t0 = ts
            t_bench += te - ts
            if y.shape != (p.repeats, len(p.levels), plan.n_out):
                raise HwloopError(f"{chip.info.idn}: block {p.index} came back shaped {y.shape}, "
                                  f"expected {(p.repeats, len(p.levels), plan.n_out)}")
            store.write_block(p.index, y, 0.5 * (ts + te) - t0, chip.temperature(), session)
            measured += 1
            if progress:
                progress(int(store.done.sum()), len(plan.probes))
    store.set_attrs(measure_s=round(float(store.attrs.get("measure_s", 0.0)) + t_bench, 3))
    return store.measurements()


def _reprograms(device) -> int:
    """How often a driver re-loaded a layer the chip had lost (``VisaDevice.stats``; 0 for others)."""
    return int(getattr(device, "stats", {}).get("reprograms", 0))
