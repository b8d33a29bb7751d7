"""What a check found, as text for people and as a plain dict (the cache, Dask, JSON)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .stats import BarState, Estimate

#: exit status of ``hwloop check`` per decision (2 is bad input, as for every command)
EXIT = {"pass": 0, "fail": 1, "undecided": 3}


@dataclass
class LayerSNR:
    index: int
    name: str
    snr_db: float          # median over samples; inf when the layer is noise-free
    clipped: float = 0.0   # fraction of DAC inputs and ADC outputs that hit the converter ranges


@dataclass
class CheckResult:
    """Outcome of one check (one model on one target): ``decision`` pass, fail or undecided."""

    model: str
    profile: str
    profile_sha256: str
    data: str
    repeats: int
    seed: int
    decision: str
    bars: list[BarState]
    scope: str = "population"
    confidence: float = 0.95
    max_repeats: int = 0
    accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (repeat,)
    clean_accuracy: float = math.nan
    layers: list[LayerSNR] = field(default_factory=list)
    method: str = "sampling"        # or "analytic"
    not_modelled: str = ""          # analytic: profile effects the prediction leaves out
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.decision == "pass"

    @property
    def exit_code(self) -> int:
        return EXIT[self.decision]

    @property
    def mean(self) -> float:
        return float(self.accuracy.mean()) if self.accuracy.size else math.nan

    @property
    def std(self) -> float:
        if len(self.accuracy) < 2 or np.ptp(self.accuracy) == 0:
            return 0.0  # exactly, not a rounding residue
        return float(self.accuracy.std(ddof=1))

    @property
    def noisiest(self) -> LayerSNR | None:
        return min(self.layers, key=lambda l: l.snr_db) if self.layers else None

    @property
    def name(self) -> str:
        return f"{Path(self.model).name}[{self.profile}]"

    def reason(self) -> str:
        """One line: the bars that decided (or are undecided), with value, bound and bar."""
        want = {"pass": "pass", "fail": "fail"}.get(self.decision, "undecided")
        shown = [b for b in self.bars if b.decision == want] or self.bars
        return "; ".join(bar_text(b) for b in shown)

    def summary(self) -> str:
        conf = f"{100 * self.confidence:g}% confidence, scope {self.scope}"
        how = (f"{self.repeats} of at most {self.max_repeats} repeats" if self.method == "sampling"
               else "analytic screen (no sampling)")
        lines = [f"{self.decision.upper()}: {self.model} on profile {self.profile}, data {self.data}, "
                 f"{how}, seed {self.seed}, {conf}"]
        lines += [f"  {bar_text(b)}: {b.decision}" for b in self.bars]
        if self.accuracy.size:
            n = self.accuracy.size
            lo, hi = self.accuracy.min(), self.accuracy.max()
            lines.append(f"accuracy mean {self.mean:.4f} ± {self.std / math.sqrt(n):.4f} (standard error of the mean "
                         f"over {n} repeats), standard deviation between repeats {self.std:.4f} (ddof 1), "
                         f"min {lo:.4f}, max {hi:.4f}; noise-free {self.clean_accuracy:.4f}")
        n = self.noisiest
        if n is not None:
            lines.append(f"noisiest layer: {n.index} {n.name!r}, median SNR {_db(n.snr_db)}")
            lines.append("layer SNR: " + ", ".join(f"{l.index}:{_db(l.snr_db)}" for l in self.layers))
        clipped = [f"{l.index}:{100 * l.clipped:.2f}%" for l in self.layers if l.clipped]
        if clipped:
            lines.append("clipped at DAC/ADC range: " + ", ".join(clipped))
        if self.not_modelled:
            lines.append(f"not modelled by the analytic screen: {self.not_modelled}")
        if self.cached:
            lines.append("(cached result: same model, profile, data, seed and settings)")
        return "\n".join(lines)

    def write_junit(self, path: str | os.PathLike) -> None:
        """A JUnit XML report with one test case."""
        from .outputs import write_junit

        write_junit([self], path)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy"] = self.accuracy.tolist()
        d["layers"] = [{**asdict(l), "snr_db": _num(l.snr_db)} for l in self.layers]
        d["bars"] = [{**{k: _num(v) for k, v in asdict(b).items() if k != "estimate"},
                      "estimate": {k: _num(v) for k, v in asdict(b.estimate).items()} if b.estimate else None}
                     for b in self.bars]
        d["clean_accuracy"] = _num(self.clean_accuracy)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CheckResult":
        d = dict(d)
        d["accuracy"] = np.asarray(d["accuracy"], dtype=np.float64)
        d["layers"] = [LayerSNR(**{**l, "snr_db": float(l["snr_db"])}) for l in d["layers"]]
        d["bars"] = [BarState(**{**{k: (float(v) if k in ("lower", "upper") else v) for k, v in b.items()},
                                 "estimate": Estimate(**{k: float(v) if k in ("value", "se") else v
                                                         for k, v in b["estimate"].items()})
                                 if b["estimate"] else None}) for b in d["bars"]]
        d["clean_accuracy"] = float(d["clean_accuracy"])
        return cls(**d)


def bar_text(b: BarState) -> str:
    """``drop 0.0061 (upper bound 0.0102) <= bar 0.0261``."""
    if b.estimate is None:
        return f"{b.name}: not evaluated"
    side, op = ("lower", ">=") if b.direction == "min" else ("upper", "<=")
    return f"{b.name} {b.estimate.value:.4f} ({side} bound {b.bound:.4f}), bar {op} {b.threshold:.4f}"


def _num(v):
    """JSON has no inf/nan: write them as strings (float() reads them back)."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _db(v: float) -> str:
    return "inf dB (noise-free)" if math.isinf(v) else f"{v:.1f} dB"
