"""The Walking Noise sweep's Zarr store: one cell per (site, sigma, repeat), resumable.

A ``hwloop.resumable.ZarrStore``: created aside and renamed into place, opened
with its manifest checked.  The client is its only writer (under
``hwloop.files.store_lock``); each finished point lands in its own chunks
(written atomically), ``accuracy`` last, so a NaN accuracy means "not done" and
a resumed sweep computes exactly the missing points.  ``open_sweep`` reads it
as an ``xarray.Dataset``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..cf import SWEEP, annotate, decode_attrs, store_attrs
from ..errors import HwloopError
from ..resumable import ZarrStore, creating
from .sites import Site

if TYPE_CHECKING:
    from .sweep import SweepSettings


def _settings_json(settings: SweepSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


#: manifest: the arrays every sweep store has, and those of noisy-training sweeps
_ARRAYS = ("accuracy",)
_TRAIN_ARRAYS = ("accuracy_eval_only", "weight_mag", "binarization", "clean_accuracy", "clean_weight_mag",
                 "clean_binarization", "clean_state")


class SweepStore(ZarrStore):
    """The sweep's Zarr store; the client is its only writer (under ``store_lock``)."""

    KIND = "sweep store"
    NOT_A = "not a sweep store"

    def __init__(self, path: str | os.PathLike, mode: str = "r+"):
        super().__init__(path, mode)
        self.require(_ARRAYS + (_TRAIN_ARRAYS if self.settings.get("train_noise") else ()),
                     "run the sweep again into another --out")
        self._arrays: dict = {}

    def check_format(self) -> None:
        """A sweep's attributes hold its settings (sweep stores predate the ``format`` attribute)."""
        self.settings = self.attrs.get("settings")
        if not isinstance(self.settings, dict):
            what = "a run store" if "hwloop" in self.attrs or "n_samples" in self.attrs else "not made by hwloop walk"
            raise HwloopError(f"{self.path}: not a sweep store ({what})")

    @classmethod
    def create(cls, path: Path, settings: SweepSettings, sites: list[Site], attrs: dict,
               layers: list[str] | None = None) -> "SweepStore":
        """Write an empty store beside ``path`` and rename it into place (never half-made)."""
        import xarray as xr

        s = settings
        walk = s.walk_sites(len(sites))
        names = ["global"] if s.mode == "global" else [sites[k].name for k in walk]
        n, m, r = len(names), len(s.sigmas), s.repeats
        coords = {"site": np.array(walk), "site_name": ("site", np.array(names, dtype=object)),
                  "sigma": np.array(s.sigmas), "repeat": np.arange(r)}
        nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
        cell = ("site", "sigma", "repeat")
        data: dict[str, tuple] = {"accuracy": (cell, nan(n, m, r))}
        enc: dict[str, dict] = {"accuracy": {"chunks": (1, 1, 1)}}
        if s.train_noise:
            coords["layer"] = np.array(layers, dtype=object)
            coords["probe"] = np.array([x.name for x in sites], dtype=object)
            L, P = len(layers), len(sites)
            data |= {"accuracy_eval_only": (cell, nan(n, m, r)),
                     "weight_mag": (cell + ("layer",), nan(n, m, r, L)),
                     "binarization": (cell + ("probe",), nan(n, m, r, P)),
                     "clean_accuracy": (("repeat",), nan(r)),
                     "clean_weight_mag": (("repeat", "layer"), nan(r, L)),
                     "clean_binarization": (("repeat", "probe"), nan(r, P)),
                     "clean_state": (("repeat", "param"), nan(r, int(attrs["n_state"])))}
            enc |= {"accuracy_eval_only": {"chunks": (1, 1, 1)}, "weight_mag": {"chunks": (1, 1, 1, L)},
                    "binarization": {"chunks": (1, 1, 1, P)}, "clean_accuracy": {"chunks": (1,)},
                    "clean_weight_mag": {"chunks": (1, L)}, "clean_binarization": {"chunks": (1, P)},
                    "clean_state": {"chunks": (1, int(attrs["n_state"]))}}
        ds = xr.Dataset(data, coords=coords, attrs=store_attrs({**attrs, "settings": _settings_json(s), "complete": 0}))
        annotate(ds, SWEEP, {"sigma": sigma_attrs(s.noise)})
        with creating(path, overwrite=False, exists="exists (use the same settings to resume it)") as tmp:
            ds.to_zarr(str(tmp), mode="w", encoding=enc, consolidated=False)
        return cls(path)

    def check(self, settings: SweepSettings, sha256: str | None) -> None:
        """Refuse to resume a store made with other settings (names the first differing key)."""
        want = _settings_json(settings)
        for k in sorted(set(want) | set(self.settings)):
            if want.get(k) != self.settings.get(k):
                raise HwloopError(f"{self.path}: made with {k}={self.settings.get(k)!r}, not {want.get(k)!r}; "
                                  "use another --out or the same settings to resume")
        if sha256 and self.attrs.get("model_sha256") != sha256:
            raise HwloopError(f"{self.path}: made from another model (sha256 {self.attrs.get('model_sha256')})")

    def missing(self, name: str = "accuracy") -> list[tuple[int, ...]]:
        """Indices of points not yet written."""
        return [tuple(int(i) for i in ix) for ix in np.argwhere(np.isnan(self.root[name][...]))]

    def write(self, result: dict, index: tuple[int, int, int] | None = None) -> None:
        """Write one finished point at store ``index``; ``accuracy`` (the done-marker) last."""
        if index is None:
            ix, keys = (result["repeat"],), ["clean_state", "clean_weight_mag", "clean_binarization", "clean_accuracy"]
        else:
            ix = index
            keys = [k for k in result if k != "accuracy"] + ["accuracy"]
        for k in keys:
            self._array(k)[ix] = result[k]

    def _array(self, name: str):
        """Array handles opened once (each open reads its metadata)."""
        if name not in self._arrays:
            self._arrays[name] = self.root[name]
        return self._arrays[name]

    def finish(self) -> None:
        if not self.missing() and ("clean_accuracy" not in self.root or not self.missing("clean_accuracy")):
            self.root.attrs["complete"] = 1


def open_sweep(path: str | os.PathLike):
    """The sweep as an ``xarray.Dataset`` (dims site, sigma, repeat); unfinished points are NaN.

    Its attrs are the flat, netCDF-ready form (``hwloop.cf``; an older store's nested ones are flattened),
    so ``to_netcdf`` works on it; ``hwloop.cf.decode_attrs(ds.attrs)`` gives ``settings``, ``sites`` as dicts.
    """
    import xarray as xr

    SweepStore(path, mode="r")       # a sweep store, its manifest complete
    try:
        ds = xr.open_zarr(str(path), consolidated=False)
        ds.attrs = store_attrs(decode_attrs(ds.attrs))
        return ds.load()
    except Exception as e:
        raise HwloopError(f"{path}: damaged sweep store: {e}") from None


def sigma_attrs(noise: str) -> dict[str, str]:
    """What the sweep's ``sigma`` coordinate means for a noise kind (a standard deviation, not a variance)."""
    what = {"additive": ("standard deviation s of additive noise x + N(0, s^2)", "a.u."),
            "multiplicative": ("standard deviation s of multiplicative noise x * N(1, s^2)", "1"),
            "combined": ("amplitude A of combined noise (s_add = A r, s_mul = A (1 - r))", "1")}
    long_name, units = what.get(noise, ("noise level", "1"))
    return {"long_name": f"Walking Noise strength: {long_name}", "units": units}
