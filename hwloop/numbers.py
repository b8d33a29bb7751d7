"""How hwloop states a repeated measurement: the mean ± the standard error of the mean.

One convention for every command and report (``run``, ``demo``, ``analyze``,
``check``): the spread over repetitions is summarised by the standard error
of the mean, std(ddof=1)/sqrt(n), and the text says so.
"""

from __future__ import annotations

import math

import numpy as np

#: the words that follow every "±" hwloop prints
PM_NOTE = "± one standard error of the mean"
#: what the old key ``accuracy_std`` (analysis .nc attributes, check JUnit properties) holds
ACCURACY_STD_NOTE = ("accuracy_std: the standard deviation of the accuracy between repeats (ddof 1), not the "
                     "error of the mean (that is accuracy_sem); kept under this name for existing readers, "
                     "the same value as accuracy_std_between_repeats")


def mean_sem(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of ``values``; the error is NaN for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return math.nan, math.nan
    sem = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), sem


def pm(values, what: str = "accuracy", fmt: str = "{:.4f}") -> str:
    """``"accuracy 0.9412 ± 0.0021 (mean ± s.e.m. over 20 repeats)"``."""
    v = np.asarray(values).reshape(-1)
    m, se = mean_sem(v)
    if v.size == 1:
        return f"{what} {fmt.format(m)} (one repeat, so no standard error)"
    err = "n/a" if math.isnan(se) else fmt.format(se)
    return f"{what} {fmt.format(m)} ± {err} (mean ± standard error over {v.size} repeats)"


def with_error(value: float, err: float, digits: int = 2) -> str:
    """``value ± err`` with the error to ``digits`` significant digits and the value to the same decimal place.

    ``0.02068, 0.003776`` -> ``0.0207 ± 0.0038``; ``2.005e-4, 1.5e-6`` -> ``(2.005 ± 0.015)e-04``: no digits
    beyond what the error supports.  Without a usable error (NaN, 0): the value to 4 significant digits.
    """
    value, err = float(value), float(err)
    if not (math.isfinite(value) and math.isfinite(err)) or err <= 0:
        return f"{value:.4g}" + ("" if math.isnan(err) or err == 0 else f" ± {err:.2g}")
    last = math.floor(math.log10(err)) - (digits - 1)           # decade of the last digit shown
    scale = math.floor(math.log10(abs(value))) if value != 0 else last + digits - 1
    if last - scale < -6:                                        # the error is tiny: say so, not 10 digits
        return f"{value:.6g} ± {err:.{digits}g}"
    if -3 <= scale < 5:
        decimals = max(0, -last)
        return f"{value:.{decimals}f} ± {err:.{decimals}f}"
    decimals = max(0, scale - last)
    return f"({value / 10 ** scale:.{decimals}f} ± {err / 10 ** scale:.{decimals}f})e{scale:+03d}"
