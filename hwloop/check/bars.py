"""The bars a check holds a model to, and the statistic behind each, from the observed outputs.

Classifiers: ``min_accuracy`` (noisy accuracy), ``max_drop`` (noise-free
accuracy on the same samples minus noisy accuracy, paired per sample),
``max_flip_rate`` (share of predictions that differ from the noise-free
one), ``class_min`` (accuracy on the samples of one class).  Regressors
(``metric`` rmse or mae): ``max_increase`` of the error over the noise-free
model's, in the targets' units.  Every statistic is a mean of per-(repeat,
sample) values, or (RMSE) a smooth function of such means, linearised for its
standard error; ``hwloop.check.stats`` turns them into bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import HwloopError
from .stats import Estimate, estimate

METRICS = ("accuracy", "rmse", "mae")


@dataclass(frozen=True)
class Bars:
    """What a check requires; several bars at once.  Fractions in [0, 1] for the classifier bars."""

    min_accuracy: float | None = None
    max_drop: float | None = None
    max_flip_rate: float | None = None
    class_min: tuple[tuple[int, float], ...] = ()
    metric: str = "accuracy"
    max_increase: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise HwloopError(f"--metric {self.metric!r}: not one of {', '.join(METRICS)}")
        for name in ("min_accuracy", "max_drop", "max_flip_rate"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise HwloopError(f"--{name.replace('_', '-')} {v}: must lie in [0, 1]")
        for c, v in self.class_min:
            if not 0.0 <= v <= 1.0 or c < 0:
                raise HwloopError(f"--class-min {c}={v}: need a class >= 0 and a minimum in [0, 1]")
        regression = self.metric != "accuracy"
        if regression and (self.min_accuracy is not None or self.max_drop is not None
                           or self.max_flip_rate is not None or self.class_min):
            raise HwloopError(f"--metric {self.metric}: a regressor has no accuracy bars; use --max-increase")
        if not regression and self.max_increase is not None:
            raise HwloopError("--max-increase applies to --metric rmse or mae")
        if self.max_increase is not None and not self.max_increase >= 0:
            raise HwloopError(f"--max-increase {self.max_increase}: must be >= 0")
        if not self.names():
            raise HwloopError("no bar given: use --min-accuracy, --max-drop, --max-flip-rate, --class-min "
                              "or --max-increase (with --metric)")

    def names(self) -> list[tuple[str, str, float]]:
        """(name, direction, threshold) of every bar given."""
        out = []
        if self.min_accuracy is not None:
            out.append(("accuracy", "min", self.min_accuracy))
        if self.max_drop is not None:
            out.append(("drop", "max", self.max_drop))
        if self.max_flip_rate is not None:
            out.append(("flip_rate", "max", self.max_flip_rate))
        out += [(f"accuracy[class {c}]", "min", v) for c, v in self.class_min]
        if self.max_increase is not None:
            out.append((f"{self.metric}_increase", "max", self.max_increase))
        return out

    def to_dict(self) -> dict:
        return {"min_accuracy": self.min_accuracy, "max_drop": self.max_drop, "max_flip_rate": self.max_flip_rate,
                "class_min": [list(p) for p in self.class_min], "metric": self.metric,
                "max_increase": self.max_increase}


def parse_class_min(items: list[str] | None) -> tuple[tuple[int, float], ...]:
    """``["3=0.8", "7=0.85"]`` (or comma lists) -> ((3, 0.8), (7, 0.85))."""
    out = []
    for item in items or []:
        for part in item.split(","):
            try:
                c, v = part.split("=")
                out.append((int(c), float(v)))
            except ValueError:
                raise HwloopError(f"--class-min {part!r}: expected CLASS=MIN, e.g. 3=0.8") from None
    return tuple(out)


@dataclass
class Observations:
    """What the repeats produced so far: per-(repeat, sample) predictions (classifier) or errors (regressor)."""

    labels: np.ndarray                       # (n,) int classes, or (n, k) / (n,) float targets
    clean: np.ndarray                        # (n,) predicted class, or (n,) squared / absolute error
    pred: list[np.ndarray] = field(default_factory=list)     # each (r, n): class or error per sample

    @property
    def repeats(self) -> int:
        return sum(len(p) for p in self.pred)

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.pred) if len(self.pred) > 1 else self.pred[0]


def classifier_observations(labels: np.ndarray, clean_output: np.ndarray) -> Observations:
    return Observations(np.asarray(labels), np.asarray(clean_output).argmax(axis=-1))


def add_outputs(obs: Observations, output: np.ndarray, metric: str) -> None:
    """Add the outputs (repeat, sample, k) of one look."""
    if metric == "accuracy":
        obs.pred.append(np.asarray(output).argmax(axis=-1).astype(np.int32))
    else:
        obs.pred.append(sample_error(output, obs.labels, metric))


def sample_error(output: np.ndarray, targets: np.ndarray, metric: str) -> np.ndarray:
    """Per-sample squared (rmse) or absolute (mae) error, mean over output values: (..., n)."""
    out = np.asarray(output, dtype=np.float64)
    diff = out.reshape(out.shape[:-1] + (-1,)) - np.asarray(targets, np.float64).reshape(len(targets), -1)
    return (diff ** 2 if metric == "rmse" else np.abs(diff)).mean(axis=-1)


def statistic(obs: Observations, bar: str, metric: str, scope: str, z: float) -> Estimate:
    """The estimate of bar ``bar`` (a name from ``Bars.names``) from ``obs``."""
    m = obs.matrix()
    if metric != "accuracy":
        if metric == "mae":
            return estimate(m - obs.clean[None], scope, span=None)
        mse, mse0 = float(m.mean()), float(obs.clean.mean())
        g, g0 = 0.5 / math.sqrt(max(mse, 1e-300)), 0.5 / math.sqrt(max(mse0, 1e-300))
        return estimate(g * m - g0 * obs.clean[None], scope, value=math.sqrt(mse) - math.sqrt(mse0), span=None)
    correct = (m == obs.labels[None]).astype(np.float64)
    if bar == "accuracy":
        v = correct
    elif bar == "drop":
        v = (obs.clean == obs.labels)[None].astype(np.float64) - correct
    elif bar == "flip_rate":
        v = (m != obs.clean[None]).astype(np.float64)
    else:
        cls = int(bar.split()[-1].rstrip("]"))
        v = correct[:, obs.labels == cls]
        if v.shape[1] == 0:
            raise HwloopError(f"--class-min {cls}: no sample of class {cls} in the data")
    return estimate(v, scope, z=z)
