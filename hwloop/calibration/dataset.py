"""A calibration store as one xarray Dataset: every measured block in one array, with what was measured.

Why: the store keeps one Zarr array per probe block (``blocks/<k>``), because
blocks differ in shape (repetitions x samples) and each is written, and marked
done, on its own (``hwloop.calibration.measure``).  Someone looking at the data
wants one table of readings instead, so ``open_calibration`` stacks the
completed blocks along one ``reading`` dimension (one repetition of one sample
of one block), with the block, repetition, sample and the sample's nominal
input as coordinates, and the per-block time, temperature and session along
``probe``.  Every variable has ``units`` and ``long_name``; the attributes are
the store's flat provenance, so ``to_netcdf`` works on the result.

    ds = open_calibration("chip.cal.zarr")
    ds.output.where(ds.block == 3, drop=True).groupby("sample").var()   # per-sample variance in block 3
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .. import cf
from .measure import CalibrationStore, Measurements

OUT, ONE = cf.OUT, cf.ONE

#: variable -> (long_name, units) of the stacked view (``cf.CALIBRATION`` has t, temperature, session)
TABLE = {
    **cf.CALIBRATION,
    "output": ("chip output of one reading (one repetition of one sample of a probe block)", OUT),
    "reading": ("reading index (one repetition of one sample of one block)", ONE),
    "block": ("probe block the reading belongs to", ONE),
    "repeat": ("repetition index within the block", ONE),
    "sample": ("sample index within the block", ONE),
    "level": ("nominal pre-activation of every neuron for the sample (0 for norm probes)", OUT),
    "common_input": ("value on every input for norm probes (NaN for the others)", OUT),
    "block_kind": ("kind of probe block: level, act or norm", None),
    "activation": ("activation the chip was set to for the block", None),
    "weight": ("|w| of the block's weight pattern", ONE),
    "repeats": ("repetitions per sample in the block", ONE),
    "samples": ("samples in the block", ONE),
}


def open_calibration(path: str | Path) -> xr.Dataset:
    """The completed blocks of the calibration store at ``path`` as one Dataset (see the module doc)."""
    return calibration_dataset(CalibrationStore(path).measurements())


def calibration_dataset(meas: Measurements) -> xr.Dataset:
    """``Measurements`` (blocks in plan order) as one Dataset with dims ``reading``, ``neuron``, ``probe``."""
    blocks = meas.blocks
    n_out = meas.plan.n_out
    ys = [b.y.reshape(-1, n_out) for b in blocks]
    per_reading: dict[str, list[np.ndarray]] = {k: [] for k in ("block", "repeat", "sample", "level", "common_input")}
    for b in blocks:
        r, s = b.y.shape[:2]
        p = b.probe
        per_reading["block"].append(np.full(r * s, p.index))
        per_reading["repeat"].append(np.repeat(np.arange(r), s))
        per_reading["sample"].append(np.tile(np.arange(s), r))
        per_reading["level"].append(np.tile(np.asarray(p.levels, np.float64), r))
        commons = np.asarray(p.commons, np.float64) if p.commons else np.full(s, np.nan)
        per_reading["common_input"].append(np.tile(commons, r))
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in per_reading.items()}
    coords = {
        "reading": np.arange(sum(len(y) for y in ys)), "neuron": np.arange(n_out),
        "probe": np.array([b.probe.index for b in blocks], np.int64),
        **{k: ("reading", cat[k].astype(np.int64 if k in ("block", "repeat", "sample") else np.float64))
           for k in cat},
    }
    data = {
        "output": (("reading", "neuron"), np.concatenate(ys) if ys else np.zeros((0, n_out), np.float32)),
        "t": ("probe", np.array([b.t for b in blocks], np.float64)),
        "temperature": ("probe", np.array([b.temperature for b in blocks], np.float64)),
        "session": ("probe", np.array([b.session for b in blocks], np.int32)),
        "block_kind": ("probe", np.array([b.probe.kind for b in blocks], dtype=str)),
        "activation": ("probe", np.array([b.probe.activation for b in blocks], dtype=str)),
        "weight": ("probe", np.array([b.probe.weight or meas.plan.weight for b in blocks], np.float64)),
        "repeats": ("probe", np.array([b.y.shape[0] for b in blocks], np.int32)),
        "samples": ("probe", np.array([b.y.shape[1] for b in blocks], np.int32)),
    }
    ds = xr.Dataset(data, coords=coords, attrs=cf.store_attrs(meas.attrs))
    return cf.annotate(ds, TABLE)
