"""The neurons' transfer function per activation mode, and where the noise sits (before or after it).

See ``TransferFit`` and ``PlacementFit`` and docs/calibration.md; the choice among
transfer-function families is ``hwloop.calibration.families``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .adc import ADCFit, or_ideal
from .families import FAMILIES, HOMOGENEOUS, fit_family, select_family
from .groups import _clipped, _quiet

if TYPE_CHECKING:
    from .noise import NoiseFit

# -- transfer function ----------------------------------------------------------------
class TransferFit:
    """Which transfer function each activation mode really has, its slope and its saturation.

    The mean curve over neurons, less the mean offset and divided by the mean
    gain's static part (``gain``: 1 unless the linear mode showed otherwise),
    is fitted with ``scale * f(slope * a)`` for every family in ``FAMILIES``;
    ``hwloop.calibration.families.select_family`` chooses among them with a
    criterion that penalises flexibility and flags degenerate fits.  Learned
    per mode: ``results_[mode] = {function, slope, scale, slope_stderr,
    scale_stderr, offset, rms, chi2, saturation, note, candidates}``;
    ``saturation`` is the largest output the fitted curve reaches (``scale``
    for sigmoid/tanh); ``candidates`` every family's fit quality and status.

    ``pre_var(a)``: when the noise sits before the transfer function, the
    variance of the noisy pre-activation at ``a``; the mean curve is then
    ``scale * E[f(slope * (a + n))]`` (Gauss-Hermite), since a curved f turns
    noise into a shift of the mean.
    """

    def __init__(self, offset: float = 0.0, gain: float = 1.0, gain_sem: float = 0.0, offset_sem: float = 1e-3,
                 adc: ADCFit | None = None, pre_var=None):
        self.offset = offset
        self.gain = gain
        self.gain_sem = gain_sem     # relative uncertainty of the mean gain (finite number of neurons)
        self.offset_sem = offset_sem
        self.adc = adc
        self.pre_var = pre_var

    def fit(self, measurements) -> "TransferFit":
        self.results_, self.curves_ = {}, {}
        modes = sorted({b.probe.activation for b in measurements.blocks if b.probe.kind == "act"})
        for mode in modes:
            curve = self._curve(measurements, mode)
            if curve is None:
                continue
            a, h, err = curve
            sd = np.sqrt(np.maximum(self.pre_var(a), 0.0)) if self.pre_var is not None else None
            offset_sem = max(float(self.offset_sem), 1e-9)
            fits = {fam: r for fam in FAMILIES if (r := fit_family(fam, a, h, err, offset_sem, sd)) is not None}
            if not fits:
                continue
            fam, candidates, note = select_family(mode, fits)
            best = dict(fits[fam], function=fam, note=note, candidates=candidates)
            best["scale_stderr"] = float(np.hypot(best["scale_stderr"], self.gain_sem * best["scale"]))
            if fam in HOMOGENEOUS:
                best["slope_stderr"] = float(np.hypot(best["slope_stderr"], self.gain_sem * best["slope"]))
            best["saturation"] = float(best["scale"] * np.max(np.abs(FAMILIES[fam](best["slope"] * a))))
            self.curves_[mode] = (a, h, err)
            self.results_[mode] = best
        return self

    def _curve(self, measurements, mode: str):
        """Levels, neuron-averaged outputs (offset removed, per unit gain) and their errors; None if < 4 levels."""
        adc = or_ideal(self.adc)
        gs = [g for g in measurements.groups(kinds=("act",), activation=mode)
              if not _clipped(g.y, adc.range_, adc.step_)]
        if len(gs) < 4:
            return None
        a = np.array([g.level for g in gs])
        h = np.array([(np.mean(g.y) - float(self.offset)) / float(self.gain) for g in gs])
        # error of the neuron-averaged mean: the common-mode noise does not average out over neurons
        err = np.array([np.sqrt(np.var(g.y.mean(1), ddof=1) / len(g.y)) for g in gs])
        # a (nearly) noiseless level reads one ADC code: its mean is off by up to half a step
        quiet = _quiet([np.mean(g.y.var(0)) for g in gs], adc.step_)
        err = np.maximum(np.where(quiet, np.maximum(err, adc.step_ / np.sqrt(12)), err), 1e-9)
        return a, h, err


# -- placement ------------------------------------------------------------------------
class PlacementFit:
    """Is the noise added before the transfer function ("pre") or after it ("post")?

    In the activation sweeps the two differ: noise after the transfer keeps the
    linear mode's variance law, ``V = D_A + D_AC + (D_M + D_MC) x^2`` at the
    output x; noise before it is filtered by the slope, ``V = h'(a)^2 V_lin(a)``
    with h the fitted transfer curve and V_lin the linear mode's variance at the
    same pre-activation divided by its squared gain.  Each hypothesis is scored
    by chi^2 against the measured neuron-averaged variances (relative error
    sqrt(2/(n N)) per level); ``placement_`` is the better one, or "post" when
    there is no saturating activation to tell them apart (``identified_`` False).
    """

    def __init__(self, noise: "NoiseFit", transfer: "TransferFit", gain: float = 1.0, adc: ADCFit | None = None):
        self.noise = noise
        self.transfer = transfer
        self.gain = gain
        self.adc = adc

    def fit(self, measurements) -> "PlacementFit":
        D = self.noise.intensities_
        adc = or_ideal(self.adc)
        q, G = adc.quantisation_variance_, float(self.gain)
        chi = {"post": 0.0, "pre": 0.0}
        used = 0
        for mode, r in self.transfer.results_.items():
            if r["function"] in ("linear", "relu"):
                continue  # a constant slope cannot tell the two apart
            f = FAMILIES[r["function"]]
            for g in measurements.groups(kinds=("act",), activation=mode):
                if _clipped(g.y, adc.range_, adc.step_):
                    continue
                C, dof = g.within_block_cov()
                v = float(np.mean(np.diag(C))) - q
                x = g.y.mean(0)
                a, eps = g.level, 1e-4
                dh = r["scale"] * (f(np.array([r["slope"] * (a + eps)])) - f(np.array([r["slope"] * (a - eps)])))[0] / (2 * eps)
                v_post = D["D_A"] + D["D_AC"] + (D["D_M"] + D["D_MC"]) * np.mean(x**2) + D["shot"] * np.mean(np.abs(x))
                lin = G * a   # what the linear mode's output would be at this pre-activation
                v_lin = D["D_A"] + D["D_AC"] + (D["D_M"] + D["D_MC"]) * lin**2 + D["shot"] * abs(lin)
                v_pre = dh**2 * v_lin / G**2
                err = max(v, 0.0) * np.sqrt(2.0 / (dof * C.shape[0])) + q + 1e-30  # + the rounding's own share
                chi["post"] += ((v - v_post) / err) ** 2
                chi["pre"] += ((v - v_pre) / err) ** 2
                used += 1
        self.chi2_ = {k: c / max(1, used) for k, c in chi.items()}
        self.identified_ = used >= 3
        self.placement_ = min(chi, key=chi.get) if self.identified_ else "post"
        return self
