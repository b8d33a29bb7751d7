"""Estimators that turn calibration measurements into device-profile numbers.

scikit-learn style: settings go to the constructor, ``fit(measurements)``
returns ``self``, learned values end in ``_`` and each comes with a standard
error ``*_stderr_`` from sample-size statistics (regression standard errors;
the variance of a quadratic form of Gaussian data, ``Var(y'Ay) = 2 tr(ACAC)/(n-1)``,
which for one variance is the familiar ``2 sigma^4 / (n-1)``).

The chip model they invert is the emulator's (``hwloop.physics`` and
``docs/profiles.md``): per neuron ``x_i = g_i * scale * f(slope * a) + o_i``,
then ``y_i = x_i (1 + xi_M,i + xi_MC) + xi_A,i + xi_AC`` (+ shot noise with
variance ``shot * |x_i|``), then the ADC (clip, quantise).  ``measurements``
is a :class:`hwloop.calibration.measure.Measurements`: blocks of outputs
(repeat, sample, neuron) at known pre-activations (``probe.levels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HwloopError
from ..layer import activate

#: ADC codes within this many steps of a rail count as clipped
_RAIL = 0.5


# -- grouping the blocks -----------------------------------------------------------
@dataclass
class Group:
    """All evaluations of one (activation, level): ``y`` is (n, neuron) float64."""

    activation: str
    level: float
    y: np.ndarray
    t: np.ndarray          # (n_blocks,) time of each contributing block
    temperature: np.ndarray


def groups(measurements, kinds=("level",), activation: str | None = "linear") -> list[Group]:
    """Pool every block's samples by (activation, level), in level order."""
    pool: dict[tuple, list] = {}
    for blk in measurements.blocks:
        p = blk.probe
        if p.kind not in kinds or (activation is not None and p.activation != activation):
            continue
        for b, lv in enumerate(p.levels):
            pool.setdefault((p.activation, lv), []).append((blk.y[:, b, :], blk.t, blk.temperature))
    out = []
    for (act, lv), parts in sorted(pool.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        y = np.concatenate([p[0] for p in parts]).astype(np.float64)
        out.append(Group(act, lv, y, np.array([p[1] for p in parts]), np.array([p[2] for p in parts])))
    return out


def _clipped(y: np.ndarray, rng: tuple[float, float] | None, step: float) -> bool:
    if rng is None:
        return False
    tol = max(step, 0.0) * _RAIL + 1e-7 * (rng[1] - rng[0])
    return bool(np.any(y <= rng[0] + tol) or np.any(y >= rng[1] - tol))


# -- ADC ------------------------------------------------------------------------------
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
        vals = np.unique(np.concatenate([b.y.ravel() for b in measurements.blocks]).astype(np.float64))
        self.min_seen_, self.max_seen_ = float(vals[0]), float(vals[-1])
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
        all_y = np.concatenate([b.y.ravel() for b in measurements.blocks])
        tol = self.step_ * _RAIL + 1e-7 * (hi - lo)
        self.clip_fraction_ = float(np.mean((all_y <= lo + tol) | (all_y >= hi - tol)))
        return self

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


# -- gain and offset ------------------------------------------------------------------
class GainOffsetFit:
    """Per-neuron gain and offset from the means of the linear-mode levels (weighted least squares).

    Learned: ``gain_``, ``offset_`` (neuron,), their ``*_stderr_``; the spread
    ``gain_spread_`` (std of the gains relative to their mean, measurement
    error removed) and ``offset_spread_``; ``mean_gain_``.
    """

    def __init__(self, output_range: tuple[float, float] | None = None, step: float = 0.0):
        self.output_range = output_range
        self.step = step

    def fit(self, measurements) -> "GainOffsetFit":
        gs = [g for g in groups(measurements) if not _clipped(g.y, self.output_range, self.step)]
        if len(gs) < 2:
            raise HwloopError("calibration: fewer than two unclipped linear levels; cannot fit gain and offset")
        a = np.array([g.level for g in gs])
        m = np.stack([g.y.mean(0) for g in gs])                                  # (L, N)
        v = np.stack([g.y.var(0, ddof=1) / len(g.y) for g in gs]) + 1e-30       # variance of each mean
        w = 1.0 / v
        sw, swa, swaa = w.sum(0), (w * a[:, None]).sum(0), (w * a[:, None] ** 2).sum(0)
        swy, sway = (w * m).sum(0), (w * a[:, None] * m).sum(0)
        det = sw * swaa - swa**2
        gain = (sw * sway - swa * swy) / det
        off = (swaa * swy - swa * sway) / det
        resid = m - (gain * a[:, None] + off)
        # Scale the errors by the reduced chi^2 when the line does not fit as well as the noise says
        # (drift, non-linearity): honest errors, never smaller than the sample statistics give.
        chi2 = (w * resid**2).sum(0) / max(1, len(a) - 2)
        infl = np.maximum(1.0, chi2)
        self.gain_, self.offset_ = gain, off
        self.gain_stderr_ = np.sqrt(sw / det * infl)
        self.offset_stderr_ = np.sqrt(swaa / det * infl)
        self.chi2_ = chi2
        self.levels_ = a
        n = len(gain)
        self.mean_gain_ = float(gain.mean())
        self.mean_gain_stderr_ = float(np.sqrt(np.var(gain, ddof=1) / n + np.mean(self.gain_stderr_**2) / n))
        rel = gain / self.mean_gain_
        self.gain_spread_, self.gain_spread_stderr_ = _spread(rel, self.gain_stderr_ / self.mean_gain_)
        self.offset_spread_, self.offset_spread_stderr_ = _spread(off, self.offset_stderr_)
        self.mean_offset_ = float(off.mean())
        return self


def _spread(values: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Std of per-neuron values with their measurement error removed, and its stderr (~ s/sqrt(2(n-1)))."""
    n = len(values)
    var = max(0.0, float(np.var(values, ddof=1) - np.mean(errors**2)))
    s = float(np.sqrt(var))
    total = float(np.sqrt(np.var(values, ddof=1)))
    return s, total / np.sqrt(2 * max(1, n - 1))


# -- noise intensities ---------------------------------------------------------------
NOISE_TERMS = ("D_A", "D_M", "D_AC", "D_MC", "shot")


class NoiseFit:
    """D_A, D_M, D_AC, D_MC (and shot) from the covariance across neurons at every linear level.

    At level ``a`` the model covariance of the outputs is
    ``S = diag(D_A + D_M s^2 + shot |s|) + D_AC 11' + D_MC ss'`` (+ ``q I`` for
    the ADC, ``q = step^2/12``), with ``s_i`` the neuron's noise-free output.
    Two quadratic statistics per level carry all of it: ``U``, the variance of
    the mean across neurons (common mode) and ``W``, the mean variance of the
    deviations from that mean (independent part).  Both are linear in the
    intensities, with coefficients ``tr(A S_term)``; their covariance is
    ``2 tr(A C B C)/(n-1)``.  Generalised least squares over the levels gives
    the intensities and their covariance; ``shot`` is kept only when it is
    significant (|z| > ``shot_z``), otherwise fixed at 0.
    """

    def __init__(self, gains: np.ndarray, offsets: np.ndarray, quantisation_variance: float = 0.0,
                 output_range: tuple[float, float] | None = None, step: float = 0.0, shot_z: float = 4.0):
        self.gains = np.asarray(gains, np.float64)
        self.offsets = np.asarray(offsets, np.float64)
        self.q = float(quantisation_variance)
        self.output_range = output_range
        self.step = step
        self.shot_z = shot_z

    def fit(self, measurements) -> "NoiseFit":
        rows, targets, covs, used = [], [], [], []
        for g in groups(measurements):
            if _clipped(g.y, self.output_range, self.step):
                continue
            n, N = g.y.shape
            s = self.gains * g.level + self.offsets            # noise-free output of each neuron
            C = np.cov(g.y, rowvar=False)
            A_U = np.full((N, N), 1.0 / N**2)
            A_W = np.eye(N) / N - A_U
            one = np.ones(N)
            terms = [np.diag(one), np.diag(s**2), np.outer(one, one), np.outer(s, s), np.diag(np.abs(s))]
            for A in (A_W, A_U):
                rows.append([np.sum(A * T) for T in terms])
                targets.append(np.sum(A * C) - self.q * np.trace(A))
            AC_W, AC_U = A_W @ C, A_U @ C
            cov = 2.0 / (n - 1) * np.array([[np.sum(AC_W * AC_W.T), np.sum(AC_W * AC_U.T)],
                                            [np.sum(AC_U * AC_W.T), np.sum(AC_U * AC_U.T)]])
            covs.append(cov)
            used.append(g.level)
        if len(used) < 3:
            raise HwloopError("calibration: fewer than three unclipped linear levels; cannot separate noise terms")
        X, T = np.array(rows), np.array(targets)
        Sigma = np.zeros((len(T), len(T)))
        for i, c in enumerate(covs):
            Sigma[2 * i:2 * i + 2, 2 * i:2 * i + 2] = c
        P = np.linalg.inv(Sigma)
        beta, cov = _gls(X, T, P, [0, 1, 2, 3, 4])
        self.shot_fitted_ = bool(abs(beta[4]) > self.shot_z * np.sqrt(cov[4, 4]))
        if not self.shot_fitted_:
            beta, cov = _gls(X, T, P, [0, 1, 2, 3])
        resid = T - X @ beta
        dof = max(1, len(T) - int(np.sum(np.diag(cov) > 0)))
        self.chi2_ = float(resid @ P @ resid / dof)
        # When the levels scatter more than the sampling statistics allow (drift, a model that is only
        # nearly right), widen the errors by the Birge ratio rather than report a false precision.
        cov = cov * max(1.0, self.chi2_)
        self.levels_ = np.array(used)
        self.intensities_ = dict(zip(NOISE_TERMS, beta))
        self.stderr_ = dict(zip(NOISE_TERMS, np.sqrt(np.clip(np.diag(cov), 0, None))))
        self.covariance_ = cov
        for k in NOISE_TERMS:
            setattr(self, k + "_", float(self.intensities_[k]))
            setattr(self, k + "_stderr_", float(self.stderr_[k]))
        return self


def _gls(X: np.ndarray, T: np.ndarray, P: np.ndarray, cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Generalised least squares on the chosen columns; the others are fixed at 0."""
    Xc = X[:, cols]
    cov_c = np.linalg.inv(Xc.T @ P @ Xc)
    b_c = cov_c @ Xc.T @ P @ T
    beta = np.zeros(X.shape[1])
    cov = np.zeros((X.shape[1], X.shape[1]))
    beta[cols] = b_c
    cov[np.ix_(cols, cols)] = cov_c
    return beta, cov


# -- transfer function ----------------------------------------------------------------
def _sin2(a):
    return np.sin(a) ** 2


def _exp_sat(a):
    return 1.0 - np.exp(-np.maximum(a, 0.0))


FAMILIES = {
    "sigmoid": lambda a: activate("sigmoid", a.astype(np.float64)),
    "tanh": np.tanh,
    "relu": lambda a: np.maximum(a, 0.0),
    "linear": lambda a: a,
    "sin2": _sin2,
    "exp_sat": _exp_sat,
}


class TransferFit:
    """Which transfer function each activation mode really has, its slope and its saturation.

    The mean curve over neurons, less the mean offset and divided by the mean
    gain's static part (``gain``: 1 unless the linear mode showed otherwise),
    is compared with
    ``scale * f(slope * a)`` for every family in ``FAMILIES`` (least squares);
    the best family wins.  Learned per mode: ``results_[mode] = {function,
    slope, scale, slope_stderr, scale_stderr, rms}``; ``saturation`` is the
    largest output the fitted curve reaches (``scale`` for sigmoid/tanh).
    """

    def __init__(self, offset: float = 0.0, gain: float = 1.0, gain_sem: float = 0.0, offset_sem: float = 1e-3,
                 output_range: tuple[float, float] | None = None, step: float = 0.0):
        self.offset = float(offset)
        self.offset_sem = max(float(offset_sem), 1e-9)
        self.gain = float(gain)
        self.gain_sem = float(gain_sem)   # relative uncertainty of the mean gain (finite number of neurons)
        self.output_range = output_range
        self.step = step

    def fit(self, measurements) -> "TransferFit":
        self.results_ = {}
        modes = sorted({b.probe.activation for b in measurements.blocks if b.probe.kind == "act"})
        for mode in modes:
            gs = [g for g in groups(measurements, kinds=("act",), activation=mode)
                  if not _clipped(g.y, self.output_range, self.step)]
            if len(gs) < 4:
                continue
            a = np.array([g.level for g in gs])
            h = np.array([(np.mean(g.y) - self.offset) / self.gain for g in gs])
            # error of the neuron-averaged mean: the common-mode noise does not average out over neurons
            err = np.array([np.sqrt(np.var(g.y.mean(1), ddof=1) / len(g.y)) for g in gs])
            err = np.maximum(err, 1e-9)
            best = None
            for fam, f in FAMILIES.items():
                r = _fit_family(f, fam in ("relu", "linear"), a, h, err, self.offset_sem)
                if r is not None and (best is None or r["rms"] < best["rms"]):
                    best = dict(r, function=fam)
                    best["scale_stderr"] = float(np.hypot(r["scale_stderr"], self.gain_sem * r["scale"]))
                    if fam in ("relu", "linear"):
                        best["slope_stderr"] = float(np.hypot(r["slope_stderr"], self.gain_sem * r["slope"]))
            if best is not None:
                best["saturation"] = float(best["scale"] * np.max(np.abs(FAMILIES[best["function"]](best["slope"] * a))))
                self.results_[mode] = best
        return self


def _fit_family(f, one_param: bool, a, h, err, offset_sem: float) -> dict | None:
    """Least squares of ``scale * f(slope * a) + c`` to the curve ``h``.

    ``c`` absorbs the difference between this programming's mean offset and the
    linear mode's (chips may draw offsets anew at each programming); it is held
    near 0 by a Gaussian prior of width ``offset_sem``, without which tanh and
    a shifted sigmoid could not be told apart.  relu/linear: ``scale * slope``
    is one parameter (reported as the slope).
    """
    from scipy.optimize import least_squares

    def model(p):
        return p[0] * f(a) + p[1] if one_param else p[0] * f(p[1] * a) + p[2]

    def resid(p):
        return np.append((model(p) - h) / err, p[-1] / offset_sem)

    p0 = [1.0, 0.0] if one_param else [1.0, 1.0, 0.0]
    try:
        r = least_squares(resid, p0, method="lm", max_nfev=5000)
        cov = np.linalg.inv(r.jac.T @ r.jac)
    except (ValueError, np.linalg.LinAlgError):
        return None
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    rms = float(np.sqrt(np.mean(((model(r.x) - h) / err) ** 2)))
    if one_param:
        return dict(slope=float(r.x[0]), scale=1.0, slope_stderr=float(se[0]), scale_stderr=0.0,
                    offset=float(r.x[1]), rms=rms)
    return dict(slope=float(r.x[1]), scale=float(r.x[0]), slope_stderr=float(se[1]), scale_stderr=float(se[0]),
                offset=float(r.x[2]), rms=rms)


# -- drift ----------------------------------------------------------------------------
class DriftFit:
    """Gain and offset drift against time and temperature, from the level blocks spread over the calibration.

    Each level block holds every level, so each gives its own gain and offset
    (a straight line through its neuron-averaged means, weighted by their
    sampling errors).  Learned: ``offset_per_s_``, ``gain_per_s_`` (relative
    to the mean gain), ``offset_per_K_``, ``gain_per_K_`` with ``*_stderr_``;
    ``significant_`` when any slope exceeds ``z`` standard errors.
    """

    def __init__(self, z: float = 4.0, output_range: tuple[float, float] | None = None, step: float = 0.0):
        self.z = z
        self.output_range = output_range
        self.step = step

    def fit(self, measurements) -> "DriftFit":
        blocks = [b for b in measurements.blocks if b.probe.kind == "level" and len(b.probe.levels) >= 2]
        self.n_refs_ = len(blocks)
        for k in ("offset_per_s", "gain_per_s", "offset_per_K", "gain_per_K"):
            setattr(self, k + "_", 0.0)
            setattr(self, k + "_stderr_", 0.0)
        self.significant_ = False
        if len(blocks) < 3:
            return self
        gains, offs, e_g, e_o = [], [], [], []
        for b in blocks:
            keep = [j for j in range(len(b.probe.levels)) if not _clipped(b.y[:, j, :], self.output_range, self.step)]
            a = np.array(b.probe.levels)[keep]
            cm = b.y[:, keep, :].mean(axis=2)                       # (repeat, level): neuron-averaged
            m, v = cm.mean(0), cm.var(0, ddof=1) / cm.shape[0] + 1e-30
            w = 1 / v
            sw, sa, saa = w.sum(), (w * a).sum(), (w * a * a).sum()
            det = sw * saa - sa**2
            gains.append((sw * (w * a * m).sum() - sa * (w * m).sum()) / det)
            offs.append((saa * (w * m).sum() - sa * (w * a * m).sum()) / det)
            e_g.append(np.sqrt(sw / det))
            e_o.append(np.sqrt(saa / det))
        g0 = float(np.mean(gains))
        gain, off = np.array(gains) / g0, np.array(offs)
        e_g, e_o = np.array(e_g) / abs(g0), np.array(e_o)
        t = np.array([b.t for b in blocks])
        temp = np.array([b.temperature for b in blocks])
        z_max = 0.0
        for xname, x in (("s", t), ("K", temp)):
            if not np.all(np.isfinite(x)) or np.ptp(x) <= 0:
                continue
            for yname, y, e in (("offset", off, e_o), ("gain", gain, e_g)):
                slope, se = _line_slope(x, y, e)
                setattr(self, f"{yname}_per_{xname}_", slope)
                setattr(self, f"{yname}_per_{xname}_stderr_", se)
                z_max = max(z_max, abs(slope) / se if se > 0 else 0.0)
        self.significant_ = z_max > self.z
        return self


def _line_slope(x: np.ndarray, y: np.ndarray, e: np.ndarray) -> tuple[float, float]:
    """Weighted straight-line slope and its stderr (inflated by the reduced chi^2 when above 1)."""
    w = 1.0 / np.maximum(e, 1e-30) ** 2
    sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
    sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
    det = sw * sxx - sx**2
    slope = (sw * sxy - sx * sy) / det
    icpt = (sxx * sy - sx * sxy) / det
    chi2 = float((w * (y - slope * x - icpt) ** 2).sum() / max(1, len(x) - 2))
    return float(slope), float(np.sqrt(sw / det * max(1.0, chi2)))


# -- everything ----------------------------------------------------------------------
@dataclass
class CalibrationFit:
    """All fitted parts of one calibration."""

    adc: ADCFit
    gain_offset: GainOffsetFit
    noise: NoiseFit
    transfer: TransferFit
    drift: DriftFit


def fit_all(measurements) -> CalibrationFit:
    """Run every estimator in dependency order (ADC -> gain/offset -> noise, transfer; drift)."""
    chip = measurements.plan.chip
    adc = ADCFit(chip.output_range, chip.output_bits).fit(measurements)
    go = GainOffsetFit(adc.range_, adc.step_).fit(measurements)
    noise = NoiseFit(go.gain_, go.offset_, adc.quantisation_variance_, adc.range_, adc.step_).fit(measurements)
    # the mean over a chip's neurons is itself a sample (and a chip may draw its neurons at each programming)
    n = len(go.gain_)
    transfer = TransferFit(go.mean_offset_, gain_sem=go.gain_spread_ / np.sqrt(n),
                           offset_sem=np.hypot(go.offset_spread_ * np.sqrt(2 / n), go.offset_stderr_.mean()),
                           output_range=adc.range_, step=adc.step_).fit(measurements)
    drift = DriftFit(output_range=adc.range_, step=adc.step_).fit(measurements)
    return CalibrationFit(adc, go, noise, transfer, drift)
