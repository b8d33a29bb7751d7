"""Noise intensities (D_A, D_M, D_AC, D_MC, shot) and weight read noise, from covariances across neurons.

See ``NoiseFit`` and ``ReadNoiseFit`` and docs/calibration.md; both read the
linear-mode groups of ``hwloop.calibration.groups``.
"""

from __future__ import annotations

import numpy as np

from ..errors import HwloopError
from .adc import ADCFit, or_ideal
from .estimators import Learned, group_slope
from .groups import _clipped, _quiet

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

    Settings: per-neuron ``gains``/``offsets`` (one array for every session, or a
    mapping session -> array), the fitted ``adc`` (None: ideal), ``read_var(group)``
    (the weight read noise's variance at that level, before the gains, subtracted),
    ``sheppard`` (subtract the ADC's rounding variance ``step^2/12``).
    Learned: ``intensities_``, ``stderr_``, ``covariance_``, ``chi2_``,
    ``shot_fitted_``, ``levels_``, ``skipped_levels_``, ``level_stats_``,
    ``below_resolution_`` and each term as ``D_A_`` ... with ``D_A_stderr_`` ...
    """

    D_A_, D_M_, D_AC_, D_MC_, shot_ = (Learned("intensities_", k) for k in NOISE_TERMS)
    D_A_stderr_, D_M_stderr_, D_AC_stderr_, D_MC_stderr_, shot_stderr_ = (Learned("stderr_", k) for k in NOISE_TERMS)

    def __init__(self, gains, offsets, adc: ADCFit | None = None, shot_z: float = 4.0, read_var=None,
                 sheppard: bool = True):
        self.gains = gains
        self.offsets = offsets
        self.adc = adc
        self.shot_z = shot_z
        self.read_var = read_var
        self.sheppard = sheppard

    def fit(self, measurements) -> "NoiseFit":
        adc = or_ideal(self.adc)
        q = adc.quantisation_variance_ if self.sheppard else 0.0
        levels, skipped = [], []
        for g in measurements.groups():
            if _clipped(g.y, adc.range_, adc.step_) or (isinstance(self.gains, dict) and g.session not in self.gains):
                continue
            level = self._level(g, q, adc.step_)
            if level is None:
                skipped.append(g.level)
            else:
                levels.append(level)
        self.skipped_levels_ = np.unique(skipped)
        self.below_resolution_ = not levels and bool(skipped)
        if self.below_resolution_:
            # every level read a single code: the noise is below what this ADC resolves.  Report zeros,
            # with half a step squared as the (upper-bound) error of the additive terms.
            bound = adc.step_**2 / 4
            self.levels_, self.level_stats_ = np.array([]), []
            self.intensities_ = dict.fromkeys(NOISE_TERMS, 0.0)
            self.stderr_ = {**dict.fromkeys(NOISE_TERMS, 0.0), "D_A": bound, "D_AC": bound}
            self.covariance_, self.chi2_, self.shot_fitted_ = np.diag(list(self.stderr_.values())) ** 2, 0.0, False
            return self
        if len(levels) < 3:
            why = (f"; {len(skipped)} level(s) had noise narrower than half an ADC step ({adc.step_:.4g}), where "
                   "the quantised likelihood would be needed and is not fitted" if skipped else "")
            raise HwloopError(f"calibration: fewer than three usable linear levels ({len(levels)}); "
                              f"cannot separate the noise terms{why}")
        return self._solve(levels)

    def _level(self, g, q: float, step: float) -> dict | None:
        """One level's two statistics (W, U), their design rows and covariance; None when it is too quiet."""
        N = g.y.shape[1]
        gain = self.gains[g.session] if isinstance(self.gains, dict) else self.gains
        off = self.offsets[g.session] if isinstance(self.offsets, dict) else self.offsets
        s = np.asarray(gain, np.float64) * g.level + np.asarray(off, np.float64)  # noise-free outputs
        C, dof = g.within_block_cov()
        n = dof + 1
        if _quiet(np.mean(np.diag(C)), step):
            # noise narrower than half an ADC step: Sheppard's step^2/12 does not hold there (a noiseless
            # level reads one code exactly), so this level says nothing reliable about the intensities
            return None
        A_U = np.full((N, N), 1.0 / N**2)
        A_W = np.eye(N) / N - A_U
        one = np.ones(N)
        terms = [np.diag(one), np.diag(s**2), np.outer(one, one), np.outer(s, s), np.diag(np.abs(s))]
        rv = self.read_var(g) if self.read_var is not None else 0.0
        rows = [[np.sum(A * T) for T in terms] for A in (A_W, A_U)]
        targets = [np.sum(A * C) - q * np.trace(A) - rv * float(np.sum(np.diag(A) * gain**2)) for A in (A_W, A_U)]
        AC_W, AC_U = A_W @ C, A_U @ C
        cov = 2.0 / (n - 1) * np.array([[np.sum(AC_W * AC_W.T), np.sum(AC_W * AC_U.T)],
                                        [np.sum(AC_U * AC_W.T), np.sum(AC_U * AC_U.T)]])
        # floor: a level with no noise at all (pure multiplicative noise at zero signal) would make the
        # weights infinite; the rounding noise of the ADC is the least a variance can be known to
        qf = max(q, 1e-18)
        cov += np.diag([2.0 / (n - 1) * (qf * np.trace(A)) ** 2 for A in (A_W, A_U)])
        return {"level": g.level, "s2": float(np.mean(s**2)), "rows": rows, "targets": targets, "cov": cov}

    def _solve(self, levels: list[dict]) -> "NoiseFit":
        """Generalised least squares over every level's (W, U): the intensities and their covariance."""
        X = np.array([r for lv in levels for r in lv["rows"]])
        T = np.array([t for lv in levels for t in lv["targets"]])
        Sigma = np.zeros((len(T), len(T)))
        for i, lv in enumerate(levels):
            Sigma[2 * i:2 * i + 2, 2 * i:2 * i + 2] = lv["cov"]
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
        # per level (for plots): level, mean s^2, measured W and U with their errors, and the fitted W and U
        self.level_stats_ = []
        for lv in levels:
            (W, U), (W_err, U_err) = lv["targets"], np.sqrt(np.diag(lv["cov"]))
            self.level_stats_.append(dict(level=lv["level"], s2=lv["s2"], W=W, U=U, W_err=W_err, U_err=U_err,
                                          W_fit=float(np.dot(lv["rows"][0], beta)),
                                          U_fit=float(np.dot(lv["rows"][1], beta))))
        self.levels_ = np.unique([lv["level"] for lv in levels])
        self.intensities_ = dict(zip(NOISE_TERMS, beta))
        self.stderr_ = dict(zip(NOISE_TERMS, np.sqrt(np.clip(np.diag(cov), 0, None))))
        self.covariance_ = cov
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


# -- weight read noise ----------------------------------------------------------------
class ReadNoiseFit:
    """Weight read noise from the input-norm probes (pre-activation 0, one value c on every input).

    An independent error on every weight, drawn at every evaluation, adds
    ``D_R ||x||^2`` to each output's variance (times its squared gain), with
    ``D_R = (read_noise * full_scale)^2``.  Per weight scale, a weighted straight
    line of the independent part W against ``mean(g^2) ||x||^2`` gives ``D_R``;
    comparing the two scales tells whether the full scale is the programmed
    weights' own (D_R grows 4x from half to full scale: ``relative_``) or the
    chip's fixed range (D_R stays).  Learned: ``read_noise_`` (a fraction of the
    full scale) with ``read_noise_stderr_``, ``relative_``, ``significant_``.
    """

    def __init__(self, weight_max: float, mean_gain2: float = 1.0, adc: ADCFit | None = None, z: float = 4.0):
        self.weight_max = weight_max
        self.mean_gain2 = mean_gain2
        self.adc = adc
        self.z = z

    def fit(self, measurements) -> "ReadNoiseFit":
        adc = or_ideal(self.adc)
        q = adc.quantisation_variance_
        by_w: dict[float, list] = {}
        for g in measurements.groups(kinds=("norm",)):
            if _clipped(g.y, adc.range_, adc.step_):
                continue
            C, dof = g.within_block_cov()
            N = C.shape[0]
            W = (np.trace(C) - C.sum() / N) / (N - 1) - q          # independent variance per neuron
            se = np.sqrt(2.0 / dof * (np.sum(C * C) - 2 * np.sum(C.sum(0) ** 2) / N + C.sum() ** 2 / N**2)) / (N - 1)
            by_w.setdefault(g.weight, []).append((float(self.mean_gain2) * g.norm2, W, max(se, q + 1e-30)))
        self.slopes_ = {}
        for w, pts in by_w.items():
            x, y, e = (np.array(v) for v in zip(*pts))
            if np.ptp(x) > 0:
                self.slopes_[w] = group_slope(x, y, e, np.zeros(len(x)))
        self.read_noise_ = self.read_noise_stderr_ = 0.0
        self.relative_, self.significant_ = True, False
        if not self.slopes_:
            return self
        w_hi = max(self.slopes_)
        d_hi, se_hi = self.slopes_[w_hi]
        self.significant_ = d_hi > self.z * se_hi
        if not self.significant_:
            return self
        if len(self.slopes_) > 1:
            w_lo = min(self.slopes_)
            d_lo = max(self.slopes_[w_lo][0], 1e-30)
            expect = (w_hi / w_lo) ** 2     # relative full scale: D_R grows as the weights squared
            self.relative_ = abs(np.log(d_hi / d_lo) - np.log(expect)) < abs(np.log(d_hi / d_lo))
        # r^2 = D_R / full_scale^2 from every weight scale, weighted by its error
        fs = {w: (w if self.relative_ else float(self.weight_max)) for w in self.slopes_}
        est = np.array([self.slopes_[w][0] / fs[w] ** 2 for w in self.slopes_])
        err = np.array([max(self.slopes_[w][1], 1e-30) / fs[w] ** 2 for w in self.slopes_])
        r2 = float(np.sum(est / err**2) / np.sum(1 / err**2))
        r2_se = float(1 / np.sqrt(np.sum(1 / err**2)))
        self.read_noise_ = float(np.sqrt(max(r2, 0.0)))
        self.read_noise_stderr_ = float(r2_se / (2 * max(self.read_noise_, 1e-30)))
        return self

    def variance(self, weight: float, norm2: float) -> float:
        """D_R ||x||^2 for a probe pattern of |w| = ``weight`` (before the neurons' gains)."""
        fs = weight if self.relative_ else float(self.weight_max)
        return (self.read_noise_ * fs) ** 2 * norm2
