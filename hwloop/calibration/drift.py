"""Gain and offset drift against time and temperature, from the level blocks spread over a calibration."""

from __future__ import annotations

import numpy as np

from .adc import ADCFit, or_ideal
from .estimators import Learned, group_slope, weighted_line
from .groups import _clipped


# -- drift ----------------------------------------------------------------------------
class DriftFit:
    """Gain and offset drift against time and temperature, from the level blocks spread over the calibration.

    Each level block holds every level, so each gives its own gain and offset
    (a straight line through its neuron-averaged means, weighted by their
    sampling errors).  Learned: ``offset_per_s_``, ``gain_per_s_`` (relative
    to the mean gain), ``offset_per_K_``, ``gain_per_K_`` with ``*_stderr_``
    (all kept in ``rates_``, 0 where time or temperature did not vary);
    ``n_refs_``; ``significant_`` when any slope exceeds ``z`` standard errors.
    """

    offset_per_s_, gain_per_s_, offset_per_K_, gain_per_K_ = (
        Learned("rates_", k) for k in ("offset_per_s", "gain_per_s", "offset_per_K", "gain_per_K"))
    offset_per_s_stderr_, gain_per_s_stderr_, offset_per_K_stderr_, gain_per_K_stderr_ = (
        Learned("rates_", k) for k in ("offset_per_s_stderr", "gain_per_s_stderr", "offset_per_K_stderr",
                                        "gain_per_K_stderr"))

    def __init__(self, z: float = 4.0, adc: ADCFit | None = None):
        self.z = z
        self.adc = adc

    def fit(self, measurements) -> "DriftFit":
        adc = or_ideal(self.adc)
        blocks = [b for b in measurements.blocks if b.probe.kind == "level" and len(b.probe.levels) >= 2]
        self.n_refs_ = len(blocks)
        self.rates_ = {f"{y}_per_{x}{e}": 0.0 for x in ("s", "K") for y in ("offset", "gain") for e in ("", "_stderr")}
        self.significant_ = False
        if len(blocks) < 3:
            return self
        lines = [self._block_line(b, adc) for b in blocks]
        g0 = float(np.mean([ln["slope"] for ln in lines]))
        series = {"offset": (np.array([ln["intercept"] for ln in lines]),
                             np.array([ln["intercept_stderr"] for ln in lines])),
                  "gain": (np.array([ln["slope"] for ln in lines]) / g0,
                           np.array([ln["slope_stderr"] for ln in lines]) / abs(g0))}
        session = np.array([b.session for b in blocks])
        z_max = 0.0
        for xname, x in (("s", np.array([b.t for b in blocks])), ("K", np.array([b.temperature for b in blocks]))):
            if not np.all(np.isfinite(x)) or np.ptp(x) <= 0:
                continue
            for yname, (y, e) in series.items():
                slope, se = group_slope(x, y, e, session)
                self.rates_[f"{yname}_per_{xname}"], self.rates_[f"{yname}_per_{xname}_stderr"] = slope, se
                z_max = max(z_max, abs(slope) / se if se > 0 else 0.0)
        self.significant_ = z_max > self.z
        return self

    @staticmethod
    def _block_line(b, adc: ADCFit) -> dict:
        """One block's gain and offset: a weighted line through its unclipped, neuron-averaged level means."""
        keep = [j for j in range(len(b.probe.levels)) if not _clipped(b.y[:, j, :], adc.range_, adc.step_)]
        cm = b.y[:, keep, :].mean(axis=2)                       # (repeat, level): neuron-averaged
        var = cm.var(0, ddof=1) / cm.shape[0] + 1e-30
        return weighted_line(np.array(b.probe.levels)[keep], cm.mean(0), 1 / var, inflate=False)
