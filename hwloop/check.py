"""The CI gate: does a model keep its accuracy on a device described by a profile?

``check_model`` runs the model on the emulator under the profile with R
repetitions and compares the mean accuracy with a threshold.  It also names
the noisiest layer: per sample, the power ratio of the clean layer output to
its deviation over the repetitions (both averaged over the layer's neurons),
median over samples, in dB; the layer with the lowest value is the noisiest.
Used by ``hwloop check`` and by the pytest plugin (``hwloop_check`` fixture).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Dataset, load_data
from .devices.emulator import emulators
from .errors import HwloopError
from .files import atomic_path
from .graph import Model, load_model
from .profiles import Profile, load_profile
from .runner import run_model


@dataclass
class LayerSNR:
    index: int
    name: str
    snr_db: float          # median over samples; inf when the layer is noise-free
    clipped: float = 0.0   # fraction of DAC inputs and ADC outputs that hit the converter ranges


@dataclass
class CheckResult:
    """Outcome of one check; ``passed`` is mean accuracy >= ``min_accuracy``."""

    model: str
    profile: str
    profile_sha256: str
    data: str
    repeats: int
    seed: int
    min_accuracy: float
    accuracy: np.ndarray                      # (repeat,)
    clean_accuracy: float
    layers: list[LayerSNR] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(self.accuracy.mean())

    @property
    def std(self) -> float:
        if len(self.accuracy) < 2 or np.ptp(self.accuracy) == 0:
            return 0.0  # exactly, not a rounding residue
        return float(self.accuracy.std(ddof=1))

    @property
    def passed(self) -> bool:
        return self.mean >= self.min_accuracy

    @property
    def noisiest(self) -> LayerSNR | None:
        return min(self.layers, key=lambda l: l.snr_db) if self.layers else None

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        n = self.noisiest
        lines = [
            f"{verdict}: {self.model} on profile {self.profile}, data {self.data}, {self.repeats} repeats, seed {self.seed}",
            f"accuracy mean {self.mean:.4f} (required >= {self.min_accuracy:.4f}), std {self.std:.4f}, "
            f"min {self.accuracy.min():.4f}, max {self.accuracy.max():.4f}; noise-free {self.clean_accuracy:.4f}",
        ]
        if n is not None:
            lines.append(f"noisiest layer: {n.index} {n.name!r}, median SNR {_db(n.snr_db)}")
            lines.append("layer SNR: " + ", ".join(f"{l.index}:{_db(l.snr_db)}" for l in self.layers))
        clipped = [f"{l.index}:{100 * l.clipped:.2f}%" for l in self.layers if l.clipped]
        if clipped:
            lines.append("clipped at DAC/ADC range: " + ", ".join(clipped))
        return "\n".join(lines)

    def write_junit(self, path: str | os.PathLike) -> None:
        """A JUnit XML report (one test case) that CI systems display."""
        suite = ET.Element("testsuite", name="hwloop check", tests="1", failures="0" if self.passed else "1",
                           errors="0", skipped="0")
        props = ET.SubElement(suite, "properties")
        for k, v in [("model", self.model), ("profile", self.profile), ("profile_sha256", self.profile_sha256),
                     ("data", self.data), ("repeats", self.repeats), ("seed", self.seed),
                     ("accuracy_mean", f"{self.mean:.6f}"), ("accuracy_std", f"{self.std:.6f}"),
                     ("min_accuracy", self.min_accuracy), ("clean_accuracy", f"{self.clean_accuracy:.6f}")]:
            ET.SubElement(props, "property", name=k, value=str(v))
        case = ET.SubElement(suite, "testcase", classname="hwloop.check", name=f"{Path(self.model).name}[{self.profile}]")
        if not self.passed:
            ET.SubElement(case, "failure", message=f"mean accuracy {self.mean:.4f} < {self.min_accuracy:.4f}",
                          type="AccuracyBelowThreshold").text = self.summary()
        ET.SubElement(case, "system-out").text = self.summary()
        with atomic_path(path) as tmp:
            ET.ElementTree(suite).write(tmp, encoding="utf-8", xml_declaration=True)


def _db(v: float) -> str:
    return "inf dB (noise-free)" if math.isinf(v) else f"{v:.1f} dB"


def check_model(model: Model | str | os.PathLike, *, profile: Profile | str | os.PathLike | None = None,
                data: Dataset | str = "digits", repeats: int = 10, min_accuracy: float,
                seed: int = 0, batch_size: int | None = None, devices: dict | None = None,
                devices_label: str = "bench") -> CheckResult:
    """Run ``model`` on the emulator under ``profile`` ``repeats`` times and compare mean accuracy with ``min_accuracy``.

    ``devices`` (layer index -> Device, e.g. from a bench file) replaces the emulator; ``devices_label``
    names them in the summary."""
    if not 0.0 <= min_accuracy <= 1.0:
        raise HwloopError(f"min accuracy must lie in [0, 1], got {min_accuracy}")
    if repeats < 1:
        raise HwloopError(f"repeats must be at least 1, got {repeats}")
    m = model if isinstance(model, Model) else load_model(model)
    if devices is None:
        prof = profile if isinstance(profile, Profile) else load_profile(profile)
        devices = emulators(prof, m.layers)
        label, sha = prof.name, prof.sha256
    else:
        label, sha = devices_label, ""
    ds = data if isinstance(data, Dataset) else load_data(data)
    res = run_model(m, ds, devices=devices, repeats=repeats, seed=seed, batch_size=batch_size)
    clean_acc = float((res.clean_output.argmax(axis=1) == res.labels).mean())
    layers = [LayerSNR(L.index, L.name, layer_snr_db(y, c), _clipped(getattr(devices[L.index], "stats", {})))
              for L, y, c in zip(m.layers, res.layers, res.clean_layers)]
    return CheckResult(model=str(m.path), profile=label, profile_sha256=sha,
                       data=data if isinstance(data, str) else ds.name,
                       repeats=repeats, seed=seed, min_accuracy=float(min_accuracy),
                       accuracy=np.asarray(res.accuracy, dtype=np.float64), clean_accuracy=clean_acc, layers=layers)


def _clipped(stats: dict) -> float:
    n = stats.get("dac_values", 0) + stats.get("adc_values", 0)
    return (stats.get("dac_clipped", 0) + stats.get("adc_clipped", 0)) / n if n else 0.0


def layer_snr_db(y: np.ndarray, clean: np.ndarray) -> float:
    """Median over samples of 10 log10(mean clean^2 / mean (y - clean)^2), means over neurons (and repeats).

    y (repeat, sample, neuron), clean (sample, neuron).  inf when nothing deviates.
    """
    err = (np.asarray(y, np.float64) - clean[None]) ** 2
    noise = err.mean(axis=(0, 2))
    signal = (np.asarray(clean, np.float64) ** 2).mean(axis=1)
    if not np.any(noise > 0):
        return math.inf
    with np.errstate(divide="ignore"):
        snr = 10 * np.log10(signal / np.where(noise > 0, noise, np.nan))
    snr = np.where(noise > 0, snr, np.inf)
    return float(np.median(snr))
