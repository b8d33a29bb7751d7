"""Noise intensities (D_A, D_M, D_AC, D_MC, shot) and weight read noise, from covariances across neurons.

See ``NoiseFit`` and ``ReadNoiseFit`` and docs/calibration.md; both read the
linear-mode groups of ``hwloop.calibration.groups``.
"""

from __future__ import annotations

import numpy as np

from ..errors import HwloopError
from .drift import _line_slope
from .groups import _clipped, _quiet, groups

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

    def __init__(self, gains, offsets, quantisation_variance: float = 0.0,
                 output_range: tuple[float, float] | None = None, step: float = 0.0, shot_z: float = 4.0,
                 read_var=None):
        # read_var(group) -> the weight read noise's variance at that level (before the gains), subtracted
        self.read_var = read_var
        # per-neuron gains/offsets: one array for every session, or a mapping session -> array
        self.gains = gains
        self.offsets = offsets
        self.q = float(quantisation_variance)
        self.output_range = output_range
        self.step = step
        self.shot_z = shot_z

    def fit(self, measurements) -> "NoiseFit":
        rows, targets, covs, used, skipped, design = [], [], [], [], [], []
        for g in groups(measurements):
            if _clipped(g.y, self.output_range, self.step) or (isinstance(self.gains, dict)
                                                                and g.session not in self.gains):
                continue
            N = g.y.shape[1]
            gain = self.gains[g.session] if isinstance(self.gains, dict) else self.gains
            off = self.offsets[g.session] if isinstance(self.offsets, dict) else self.offsets
            s = np.asarray(gain, np.float64) * g.level + np.asarray(off, np.float64)  # noise-free outputs
            C, dof = g.within_block_cov()
            n = dof + 1
            if _quiet(np.mean(np.diag(C)), self.step):
                # noise narrower than half an ADC step: Sheppard's step^2/12 does not hold there (a noiseless
                # level reads one code exactly), so this level says nothing reliable about the intensities
                skipped.append(g.level)
                continue
            A_U = np.full((N, N), 1.0 / N**2)
            A_W = np.eye(N) / N - A_U
            one = np.ones(N)
            terms = [np.diag(one), np.diag(s**2), np.outer(one, one), np.outer(s, s), np.diag(np.abs(s))]
            rv = self.read_var(g) if self.read_var is not None else 0.0
            for A in (A_W, A_U):
                rows.append([np.sum(A * T) for T in terms])
                targets.append(np.sum(A * C) - self.q * np.trace(A) - rv * float(np.sum(np.diag(A) * gain**2)))
            design.append((g.level, float(np.mean(s**2)), rows[-2], rows[-1]))
            AC_W, AC_U = A_W @ C, A_U @ C
            cov = 2.0 / (n - 1) * np.array([[np.sum(AC_W * AC_W.T), np.sum(AC_W * AC_U.T)],
                                            [np.sum(AC_U * AC_W.T), np.sum(AC_U * AC_U.T)]])
            # floor: a level with no noise at all (pure multiplicative noise at zero signal) would make the
            # weights infinite; the rounding noise of the ADC is the least a variance can be known to
            qf = max(self.q, 1e-18)
            cov += np.diag([2.0 / (n - 1) * (qf * np.trace(A)) ** 2 for A in (A_W, A_U)])
            covs.append(cov)
            used.append(g.level)
        self.below_resolution_ = not used and bool(skipped)
        if self.below_resolution_:
            # every level read a single code: the noise is below what this ADC resolves.  Report zeros,
            # with half a step squared as the (upper-bound) error of the additive terms.
            bound = self.step**2 / 4
            self.levels_, self.skipped_levels_, self.level_stats_ = np.array([]), np.unique(skipped), []
            self.intensities_ = dict.fromkeys(NOISE_TERMS, 0.0)
            self.stderr_ = {**dict.fromkeys(NOISE_TERMS, 0.0), "D_A": bound, "D_AC": bound}
            self.covariance_, self.chi2_, self.shot_fitted_ = np.diag(list(self.stderr_.values())) ** 2, 0.0, False
            for k in NOISE_TERMS:
                setattr(self, k + "_", 0.0)
                setattr(self, k + "_stderr_", float(self.stderr_[k]))
            return self
        if len(used) < 3:
            why = (f"; {len(skipped)} level(s) had noise narrower than half an ADC step ({self.step:.4g}), where "
                   "the quantised likelihood would be needed and is not fitted" if skipped else "")
            raise HwloopError(f"calibration: fewer than three usable linear levels ({len(used)}); "
                              f"cannot separate the noise terms{why}")
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
        self.below_resolution_ = False
        # per level (for plots): level, mean s^2, measured W and U with their errors, and the fitted W and U
        se = np.sqrt([c[i, i] for c in covs for i in (0, 1)])
        self.level_stats_ = [dict(level=lv, s2=s2, W=T[2 * i], U=T[2 * i + 1], W_err=se[2 * i], U_err=se[2 * i + 1],
                                  W_fit=float(np.dot(rw, beta)), U_fit=float(np.dot(ru, beta)))
                             for i, (lv, s2, rw, ru) in enumerate(design)]
        self.levels_ = np.unique(used)
        self.skipped_levels_ = np.unique(skipped)
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

    def __init__(self, weight_max: float, mean_gain2: float = 1.0, step: float = 0.0, z: float = 4.0,
                 output_range: tuple[float, float] | None = None):
        self.weight_max, self.g2, self.step, self.z = float(weight_max), float(mean_gain2), step, z
        self.output_range = output_range

    def fit(self, measurements) -> "ReadNoiseFit":
        q = self.step**2 / 12
        by_w: dict[float, list] = {}
        for g in groups(measurements, kinds=("norm",)):
            if _clipped(g.y, self.output_range, self.step):
                continue
            C, dof = g.within_block_cov()
            N = C.shape[0]
            W = (np.trace(C) - C.sum() / N) / (N - 1) - q          # independent variance per neuron
            se = np.sqrt(2.0 / dof * (np.sum(C * C) - 2 * np.sum(C.sum(0) ** 2) / N + C.sum() ** 2 / N**2)) / (N - 1)
            by_w.setdefault(g.weight, []).append((self.g2 * g.norm2, W, max(se, q + 1e-30)))
        self.slopes_ = {}
        for w, pts in by_w.items():
            x, y, e = (np.array(v) for v in zip(*pts))
            if np.ptp(x) > 0:
                self.slopes_[w] = _line_slope(x, y, e, np.zeros(len(x)))
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
        fs = {w: (w if self.relative_ else self.weight_max) for w in self.slopes_}
        est = np.array([self.slopes_[w][0] / fs[w] ** 2 for w in self.slopes_])
        err = np.array([max(self.slopes_[w][1], 1e-30) / fs[w] ** 2 for w in self.slopes_])
        r2 = float(np.sum(est / err**2) / np.sum(1 / err**2))
        r2_se = float(1 / np.sqrt(np.sum(1 / err**2)))
        self.read_noise_ = float(np.sqrt(max(r2, 0.0)))
        self.read_noise_stderr_ = float(r2_se / (2 * max(self.read_noise_, 1e-30)))
        return self

    def variance(self, weight: float, norm2: float) -> float:
        """D_R ||x||^2 for a probe pattern of |w| = ``weight`` (before the neurons' gains)."""
        fs = weight if self.relative_ else self.weight_max
        return (self.read_noise_ * fs) ** 2 * norm2
