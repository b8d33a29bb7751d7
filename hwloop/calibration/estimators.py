"""What the calibration estimators share: one weighted straight-line fit, and learned values declared.

``weighted_line`` is the closed-form weighted least-squares line (the gain and
offset of a neuron, or of one block) with its standard errors, inflated by the
reduced chi^2 when the points scatter more than their errors allow;
``group_slope`` is the slope with one intercept per group (a programming
session).  ``Learned`` declares on the class a learned value that an estimator
keeps in a table (``D_A_`` is ``intensities_["D_A"]``), so every learned
attribute can be read off the class, scikit-learn style, rather than being
set by ``setattr`` from a string.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray, inflate: bool = True) -> dict[str, np.ndarray]:
    """Weighted least-squares line ``y = slope x + intercept`` along axis 0.

    ``x`` is (L,); ``y`` and the weights ``w = 1/var`` are (L,) or (L, ...) (one line per
    column, e.g. per neuron).  Returns slope, intercept, their standard errors (with
    ``inflate``, scaled by the reduced chi^2 when it exceeds 1: honest errors, never
    smaller than the sampling statistics give) and the reduced chi^2.
    """
    x = np.asarray(x, float).reshape((-1,) + (1,) * (np.ndim(y) - 1))
    sw, swx, swxx = w.sum(0), (w * x).sum(0), (w * x**2).sum(0)
    swy, swxy = (w * y).sum(0), (w * x * y).sum(0)
    det = sw * swxx - swx**2
    slope = (sw * swxy - swx * swy) / det
    intercept = (swxx * swy - swx * swxy) / det
    chi2 = (w * (y - (slope * x + intercept)) ** 2).sum(0) / max(1, len(x) - 2)
    infl = np.maximum(1.0, chi2) if inflate else 1.0
    return {"slope": slope, "intercept": intercept, "slope_stderr": np.sqrt(sw / det * infl),
            "intercept_stderr": np.sqrt(swxx / det * infl), "chi2": chi2}


def group_slope(x: np.ndarray, y: np.ndarray, e: np.ndarray, group: np.ndarray) -> tuple[float, float]:
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


class Learned:
    """A learned value kept in one of the estimator's tables: ``D_A_ = Learned("intensities_", "D_A")``."""

    def __init__(self, table: str, key: Any, doc: str = ""):
        self.table, self.key = table, key
        self.__doc__ = doc or f"``{table}[{key!r}]`` as a float (set by ``fit``)"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return float(getattr(obj, self.table)[self.key])
        except AttributeError:
            raise AttributeError(f"{type(obj).__name__}.{self.name}: not fitted yet (call fit first)") from None
