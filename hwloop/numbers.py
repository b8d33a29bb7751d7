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
