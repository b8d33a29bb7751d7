"""``--analytic``: decide a check without sampling, from per-sample class probabilities.

``hwloop.check.screen`` gives, per sample, the probability that each class
wins on the programmed chip (static errors exact, fresh noise from the
predicted covariance of the logits, Gaussian).  Every bar's statistic is
then a mean over samples of a closed-form per-sample value (the probability
of being right, of flipping, ...): the decision uses the same bars and bounds
as sampling, as if with infinitely many repeats.  In the population scope the
per-sample values vary over samples; in the dataset scope nothing random is
left.  The model's class is the argmax of its last analog layer (identity
glue or softmax after it).  Assumptions and measured agreement: docs/check.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Dataset
from ..errors import HwloopError
from .result import CheckResult
from .screen import screen
from .settings import Settings
from .stats import BarState, Estimate, estimate, look_quantiles


def analytic_check(model, target, ds: Dataset, settings: Settings, *, data_name: str | None = None,
                   cache: Path | None = None) -> CheckResult:
    """The screen as a ``CheckResult`` (method ``analytic``, no repeats); ``cache``: a folder for the
    per-sample probabilities (new bars on a screened pair then cost only this decision)."""
    s = settings
    if s.bars.metric != "accuracy":
        raise HwloopError("--analytic screens classifiers (accuracy bars); regressors need sampling")
    profile = getattr(target, "profile", None)
    if profile is None:
        raise HwloopError(f"--analytic needs a device profile; {target.name} has none (check it by sampling)")
    sc = screen(model, profile, ds, s.seed, cache)
    states = decide(sc.probs, sc.clean, ds.y, s)
    decision = "fail" if any(b.decision == "fail" for b in states) else (
        "pass" if all(b.decision == "pass" for b in states) else "undecided")
    return CheckResult(model=str(model.path), profile=target.name, profile_sha256=target.sha256,
                       data=data_name or s.data, repeats=0, seed=s.seed, decision=decision, bars=states,
                       scope=s.scope, confidence=s.confidence, max_repeats=0,
                       clean_accuracy=float((sc.clean == ds.y).mean()), method="analytic",
                       not_modelled=sc.not_modelled)


def decide(probs: np.ndarray, clean: np.ndarray, labels: np.ndarray, s: Settings) -> list[BarState]:
    """Every bar of ``s`` decided from the class probabilities (n, k) and the noise-free classes (n,)."""
    rows = np.arange(len(labels))
    correct = probs[rows, labels]
    names = s.bars.names()
    z_pass, z_fail = look_quantiles(1.0 - s.confidence, 1, len(names))
    states = []
    for name, direction, threshold in names:
        if name == "accuracy":
            v = correct
        elif name == "drop":
            v = (clean == labels) - correct
        elif name == "flip_rate":
            v = 1.0 - probs[rows, clean]
        else:
            cls = int(name.split()[-1].rstrip("]"))
            v = correct[labels == cls]
            if v.size == 0:
                raise HwloopError(f"--class-min {cls}: no sample of class {cls} in the data")
        est = (estimate(v[None], "population", z=z_pass) if s.scope == "population"
               else Estimate(float(v.mean()), 0.0, len(v), 0))
        b = BarState(name, direction, threshold)
        b.update(est, z_pass, z_fail)
        states.append(b)
    return states
