"""Estimators that turn calibration measurements into device-profile numbers.

scikit-learn style: settings go to the constructor, ``fit(measurements)``
returns ``self``, learned values end in ``_`` and each comes with a standard
error ``*_stderr_`` from sample-size statistics (regression standard errors;
the variance of a quadratic form of Gaussian data, ``Var(y'Ay) = 2 tr(ACAC)/(n-1)``,
which for one variance is the familiar ``2 sigma^4 / (n-1)``).

The chip model they invert is the emulator's (``hwloop.physics`` and
``docs/profiles.md``): per neuron ``x_i = g_i * scale * f(slope * a) + o_i``,
then ``y_i = x_i (1 + xi_M,i + xi_MC) + xi_A,i + xi_AC`` (+ shot noise with
variance ``shot * |x_i|``), then the ADC (clip, quantise); or the same noise
on ``a`` before the transfer (placement "pre", ``PlacementFit``).  Estimators
and their errors are described in docs/calibration.md.  ``measurements``
is a :class:`hwloop.calibration.measure.Measurements`: blocks of outputs
(repeat, sample, neuron) at known pre-activations (``probe.levels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HwloopError
from .adc import ADCFit, or_ideal
from .drift import DriftFit
from .estimators import weighted_line
from .groups import Group, _clipped, _quiet, groups, merge_sessions  # noqa: F401  (groups: re-exported)
from .noise import NOISE_TERMS, NoiseFit, ReadNoiseFit
from .transfer import FAMILIES, PlacementFit, TransferFit

# the estimators live in their own modules (adc, groups, noise, transfer, drift); this one keeps the
# gain/offset fit and runs them all, and re-exports the public names
__all__ = ["ADCFit", "GainOffsetFit", "NoiseFit", "ReadNoiseFit", "TransferFit", "PlacementFit", "DriftFit",
           "CalibrationFit", "fit_all", "groups", "merge_sessions", "Group", "NOISE_TERMS", "FAMILIES"]


# -- gain and offset ------------------------------------------------------------------
class GainOffsetFit:
    """Per-neuron gain and offset from the means of the linear-mode levels (weighted least squares).

    Learned: ``gain_``, ``offset_`` (neuron,), their ``*_stderr_``; the spread
    ``gain_spread_`` (std of the gains relative to their mean, measurement
    error removed) and ``offset_spread_``; ``mean_gain_``.  Setting: the fitted ``adc`` (None: ideal);
    levels on its rails are left out.
    """

    def __init__(self, adc: ADCFit | None = None):
        self.adc = adc

    def fit(self, measurements) -> "GainOffsetFit":
        adc = or_ideal(self.adc)
        by_session: dict[int, list[Group]] = {}
        for g in measurements.groups():
            if not _clipped(g.y, adc.range_, adc.step_):
                by_session.setdefault(g.session, []).append(g)
        by_session = {k: v for k, v in by_session.items() if len(v) >= 2}
        if not by_session:
            raise HwloopError("calibration: fewer than two unclipped linear levels; cannot fit gain and offset")
        fits = {k: _line(gs, adc.step_) for k, gs in by_session.items()}
        counts = {k: sum(len(g.y) for g in gs) for k, gs in by_session.items()}
        main = max(counts, key=counts.get)
        self.sessions_ = sorted(fits)
        self.gain_by_session_ = {k: f[0] for k, f in fits.items()}
        self.offset_by_session_ = {k: f[1] for k, f in fits.items()}
        # the reported per-neuron values: the session with the most data
        self.gain_, self.offset_, self.gain_stderr_, self.offset_stderr_, self.chi2_, self.levels_ = fits[main]
        gains = np.concatenate([f[0] for f in fits.values()])
        g_err = np.concatenate([f[2] for f in fits.values()])
        offs = np.concatenate([f[1] for f in fits.values()])
        o_err = np.concatenate([f[3] for f in fits.values()])
        self.mean_gain_ = float(gains.mean())
        self.mean_gain_stderr_ = float(np.sqrt(np.var(gains, ddof=1) / len(gains) + np.mean(g_err**2) / len(gains)))
        self.gain_spread_, self.gain_spread_stderr_ = _spread(gains / self.mean_gain_, g_err / self.mean_gain_)
        self.offset_spread_, self.offset_spread_stderr_ = _spread(offs, o_err)
        self.mean_offset_ = float(offs.mean())
        self.offset_rms_ = float(np.sqrt(max(0.0, np.mean(offs**2) - np.mean(o_err**2))))
        return self


def _line(gs: list[Group], step: float):
    """Per-neuron weighted straight line through the level means of one session."""
    a = np.array([g.level for g in gs])
    m = np.stack([g.y.mean(0) for g in gs])                                  # (L, N)
    var = np.stack([g.y.var(0, ddof=1) for g in gs])
    n = np.array([len(g.y) for g in gs])[:, None]
    # variance of each mean; where the noise is narrower than half a step the mean is off by up to half
    # a step whatever n is (a noiseless level reads one code): its error is then the rounding's, step^2/12
    v = np.where(_quiet(var, step), np.maximum(var / n, step**2 / 12), var / n) + 1e-30
    # errors scaled by the reduced chi^2 when the line does not fit as well as the noise says (drift, non-linearity)
    line = weighted_line(a, m, 1.0 / v)
    return line["slope"], line["intercept"], line["slope_stderr"], line["intercept_stderr"], line["chi2"], a


def _spread(values: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Std of per-neuron values with their measurement error removed, and its stderr (~ s/sqrt(2(n-1)))."""
    n = len(values)
    var = max(0.0, float(np.var(values, ddof=1) - np.mean(errors**2)))
    s = float(np.sqrt(var))
    total = float(np.sqrt(np.var(values, ddof=1)))
    return s, total / np.sqrt(2 * max(1, n - 1))


# -- everything ----------------------------------------------------------------------
@dataclass
class CalibrationFit:
    """All fitted parts of one calibration."""

    adc: ADCFit
    gain_offset: GainOffsetFit
    noise: NoiseFit
    transfer: TransferFit
    drift: DriftFit
    placement: PlacementFit
    read: ReadNoiseFit


def fit_all(measurements) -> CalibrationFit:
    """Run every estimator in dependency order (ADC -> gain/offset -> noise, transfer; drift)."""
    chip = measurements.plan.chip
    adc = ADCFit(chip.output_range, chip.output_bits).fit(measurements)
    measurements = merge_sessions(measurements, adc.step_)
    go = GainOffsetFit(adc).fit(measurements)
    plan = measurements.plan
    read = ReadNoiseFit(chip.weight_max, 1.0 + go.gain_spread_**2, adc).fit(measurements)
    read_var = (lambda g: read.variance(plan.weight, g.norm2)) if read.significant_ else None
    noise = NoiseFit(go.gain_by_session_, go.offset_by_session_, adc, read_var=read_var).fit(measurements)
    # the mean over a chip's neurons is itself a sample (and a chip may draw its neurons at each programming)
    n = len(go.gain_)
    transfer = TransferFit(go.mean_offset_, gain_sem=go.gain_spread_ / np.sqrt(n),
                           offset_sem=np.hypot(go.offset_spread_ * np.sqrt(2 / n), go.offset_stderr_.mean()),
                           adc=adc).fit(measurements)
    drift = DriftFit(adc=adc).fit(measurements)
    placement = PlacementFit(noise, transfer, go.mean_gain_, adc).fit(measurements)
    if placement.placement_ == "pre":   # refit the curves with the noise where it is: before the transfer
        D = noise.intensities_
        G2 = go.mean_gain_**2

        def pre_var(a):
            return (D["D_A"] + D["D_AC"]) / G2 + (D["D_M"] + D["D_MC"]) * a**2

        transfer.pre_var = pre_var
        transfer.fit(measurements)
    return CalibrationFit(adc, go, noise, transfer, drift, placement, read)
