"""The sequential gate: draw repeats look by look, update every bar, stop as soon as the check is decided.

Independent of where the outputs come from (``draw``), so the same loop runs
a model on the emulator, on a bench, or a synthetic evaluator in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bars import Bars, Observations, add_outputs, statistic
from .stats import BarState, look_quantiles, overall


@dataclass
class GateOutcome:
    decision: str                 # pass | fail | undecided
    bars: list[BarState]
    repeats: int                  # repeats drawn until the decision (or the maximum)
    looks: tuple[int, ...]        # the schedule of cumulative repeats


def run_gate(draw: Callable[[int, int], np.ndarray], obs: Observations, bars: Bars, *, scope: str,
             confidence: float, schedule: tuple[int, ...]) -> GateOutcome:
    """``draw(look, repeats)`` returns the outputs (repeats, sample, k) of ``repeats`` fresh repeats."""
    states = [BarState(name, direction, threshold) for name, direction, threshold in bars.names()]
    z_pass, z_fail = look_quantiles(1.0 - confidence, len(schedule), len(states))
    done = 0
    for k, target in enumerate(schedule):
        add_outputs(obs, draw(k, target - done), bars.metric)
        done = target
        for s in states:
            s.update(statistic(obs, s.name, bars.metric, scope, z_pass), z_pass, z_fail)
        if overall(states) != "undecided":
            break
    return GateOutcome(overall(states), states, done, schedule)
