"""The output ADC as the codes show it: its step (the grid the outputs sit on), range and bits.

Every other estimator takes the fitted ``ADCFit``: it says which outputs sit on
a rail (left out), how large the rounding is (Sheppard's ``step^2/12``), and
when a level is quieter than the ADC resolves.  ``ADCFit.known`` stands for an
ADC whose range and step are given rather than fitted (an ideal one by default).
"""

from __future__ import annotations

import numpy as np

from .groups import _RAIL


class ADCFit:
    """ADC step and range from the spacing and limits of the measured codes.

    Learned: ``step_`` (0.0 when the outputs are not on a grid), ``bits_``
    (from the declared range and the step), ``range_`` (declared, checked
    against the extremes seen), ``clip_fraction_``.
    """

    def __init__(self, declared_range: tuple[float, float] | None = None, declared_bits: int | None = None):
        self.declared_range = declared_range
        self.declared_bits = declared_bits

    def fit(self, measurements) -> "ADCFit":
        all_y = [b.y.ravel() for b in measurements.blocks]
        self.min_seen_ = float(min(y.min() for y in all_y))
        self.max_seen_ = float(max(y.max() for y in all_y))
        # the grid shows in the first ~2M values already; sorting all of them would only cost time
        head, n = [], 0
        for y in all_y:
            head.append(y)
            n += y.size
            if n >= 2_000_000:
                break
        vals = np.unique(np.concatenate(head)).astype(np.float64)
        self.range_ = tuple(self.declared_range) if self.declared_range else (self.min_seen_, self.max_seen_)
        self.step_, self.step_stderr_, self.bits_ = 0.0, 0.0, None
        d = np.diff(vals)
        d = d[d > 1e-6 * max(1e-12, self.max_seen_ - self.min_seen_)]
        if len(vals) > 10 and len(d):
            step, icpt, k = _grid_step(vals, float(np.median(d[d < 1.5 * d.min()])))
            if step > 0:
                resid = vals - (step * k + icpt)
                sxx = float(np.sum((k - k.mean()) ** 2))
                self.step_ = step
                self.step_stderr_ = float(np.sqrt(np.sum(resid**2) / max(1, len(k) - 2) / sxx)) if sxx else 0.0
                lo, hi = self.range_
                self.bits_ = int(round(np.log2((hi - lo) / self.step_ + 1)))
        lo, hi = self.range_
        tol = self.step_ * _RAIL + 1e-7 * (hi - lo)
        clipped = sum(int(np.count_nonzero((y <= lo + tol) | (y >= hi - tol))) for y in all_y)
        self.clip_fraction_ = clipped / sum(y.size for y in all_y)
        return self

    @classmethod
    def known(cls, output_range: tuple[float, float] | None = None, step: float = 0.0) -> "ADCFit":
        """An ADC with this range and step, as if fitted (an ideal ADC by default: no range, no grid)."""
        adc = cls(output_range)
        adc.range_ = tuple(output_range) if output_range is not None else None
        adc.step_, adc.step_stderr_ = float(step), 0.0
        adc.bits_ = int(round(np.log2((adc.range_[1] - adc.range_[0]) / step + 1))) if step and adc.range_ else None
        return adc

    @property
    def quantisation_variance_(self) -> float:
        """Sheppard's correction: a uniform rounding error adds step^2/12 to every variance."""
        return self.step_**2 / 12.0


def _grid_step(vals: np.ndarray, step: float) -> tuple[float, float, np.ndarray]:
    """Refine a grid step over ever wider spans of codes (a float32 step error grows with the code index).

    Returns (step, intercept, code indices), or step 0 when the values are not on one grid.
    """
    c = vals[len(vals) // 2]      # start where the codes are densest-ish: the middle of the seen values
    span = 10.0
    while True:
        sel = np.abs(vals - c) <= span * step
        k = np.round((vals[sel] - c) / step)
        if np.mean(np.abs((vals[sel] - c) / step - k) < 0.05) < 0.99 or len(k) < 3 or np.ptp(k) > 2**24:
            return 0.0, 0.0, k
        step, icpt = (float(v) for v in np.polyfit(k, vals[sel], 1))
        if sel.all():
            return step, icpt, k
        span *= 10.0


def or_ideal(adc: ADCFit | None) -> ADCFit:
    """``adc``, or an ideal ADC (no range, no grid) when None.

    The estimators took ``(output_range, step)`` before they took the fitted ADC: such a value is
    refused with a message saying what to pass instead."""
    if adc is None:
        return ADCFit.known()
    if not hasattr(adc, "range_") or not hasattr(adc, "step_"):
        raise TypeError(f"adc={adc!r}: the estimators take the fitted ADCFit (for a known range and step: "
                        "ADCFit.known(output_range, step)), no longer an output range and a step")
    return adc
