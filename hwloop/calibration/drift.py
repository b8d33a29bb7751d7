"""Gain and offset drift against time and temperature, from the level blocks spread over a calibration."""

from __future__ import annotations

import numpy as np

from .groups import _clipped

# -- drift ----------------------------------------------------------------------------
class DriftFit:
    """Gain and offset drift against time and temperature, from the level blocks spread over the calibration.

    Each level block holds every level, so each gives its own gain and offset
    (a straight line through its neuron-averaged means, weighted by their
    sampling errors).  Learned: ``offset_per_s_``, ``gain_per_s_`` (relative
    to the mean gain), ``offset_per_K_``, ``gain_per_K_`` with ``*_stderr_``;
    ``significant_`` when any slope exceeds ``z`` standard errors.
    """

    def __init__(self, z: float = 4.0, output_range: tuple[float, float] | None = None, step: float = 0.0):
        self.z = z
        self.output_range = output_range
        self.step = step

    def fit(self, measurements) -> "DriftFit":
        blocks = [b for b in measurements.blocks if b.probe.kind == "level" and len(b.probe.levels) >= 2]
        self.n_refs_ = len(blocks)
        for k in ("offset_per_s", "gain_per_s", "offset_per_K", "gain_per_K"):
            setattr(self, k + "_", 0.0)
            setattr(self, k + "_stderr_", 0.0)
        self.significant_ = False
        if len(blocks) < 3:
            return self
        gains, offs, e_g, e_o = [], [], [], []
        for b in blocks:
            keep = [j for j in range(len(b.probe.levels)) if not _clipped(b.y[:, j, :], self.output_range, self.step)]
            a = np.array(b.probe.levels)[keep]
            cm = b.y[:, keep, :].mean(axis=2)                       # (repeat, level): neuron-averaged
            m, v = cm.mean(0), cm.var(0, ddof=1) / cm.shape[0] + 1e-30
            w = 1 / v
            sw, sa, saa = w.sum(), (w * a).sum(), (w * a * a).sum()
            det = sw * saa - sa**2
            gains.append((sw * (w * a * m).sum() - sa * (w * m).sum()) / det)
            offs.append((saa * (w * m).sum() - sa * (w * a * m).sum()) / det)
            e_g.append(np.sqrt(sw / det))
            e_o.append(np.sqrt(saa / det))
        g0 = float(np.mean(gains))
        gain, off = np.array(gains) / g0, np.array(offs)
        e_g, e_o = np.array(e_g) / abs(g0), np.array(e_o)
        t = np.array([b.t for b in blocks])
        temp = np.array([b.temperature for b in blocks])
        session = np.array([b.session for b in blocks])
        z_max = 0.0
        for xname, x in (("s", t), ("K", temp)):
            if not np.all(np.isfinite(x)) or np.ptp(x) <= 0:
                continue
            for yname, y, e in (("offset", off, e_o), ("gain", gain, e_g)):
                slope, se = _line_slope(x, y, e, session)
                setattr(self, f"{yname}_per_{xname}_", slope)
                setattr(self, f"{yname}_per_{xname}_stderr_", se)
                z_max = max(z_max, abs(slope) / se if se > 0 else 0.0)
        self.significant_ = z_max > self.z
        return self


def _line_slope(x: np.ndarray, y: np.ndarray, e: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Weighted slope of y on x with one intercept per group (programming session), and its stderr.

    The stderr is inflated by the reduced chi^2 when that exceeds 1.
    """
    w = 1.0 / np.maximum(e, 1e-30) ** 2
    xc, yc = x.astype(float).copy(), y.astype(float).copy()
    for gid in np.unique(group):
        m = group == gid
        xc[m] -= np.sum(w[m] * x[m]) / np.sum(w[m])
        yc[m] -= np.sum(w[m] * y[m]) / np.sum(w[m])
    sxx = float(np.sum(w * xc * xc))
    if sxx <= 0:
        return 0.0, 0.0
    slope = float(np.sum(w * xc * yc) / sxx)
    dof = max(1, len(x) - 1 - len(np.unique(group)))
    chi2 = float(np.sum(w * (yc - slope * xc) ** 2) / dof)
    return slope, float(np.sqrt(max(1.0, chi2) / sxx))
