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
from ..layer import response

#: ADC codes within this many steps of a rail count as clipped
_RAIL = 0.5


# -- grouping the blocks -----------------------------------------------------------
@dataclass
class Group:
    """All evaluations of one (activation, level) in one programming session: ``y`` is (n, neuron) float64."""

    activation: str
    level: float
    session: int
    y: np.ndarray
    t: np.ndarray          # (n_blocks,) time of each contributing block
    temperature: np.ndarray
    sizes: tuple[int, ...] = ()   # rows of y from each block, in order
    common: float | None = None   # "norm" probes: the value on every input
    weight: float = 0.0           # "norm" probes: |w| of their pattern
    norm2: float = 0.0            # ||x||^2 of the input

    def within_block_cov(self) -> tuple[np.ndarray, int]:
        """Covariance across neurons about each block's own mean, pooled (and its degrees of freedom).

        Slow changes between blocks (drift of gain or offset) then add nothing to the noise estimate.
        """
        acc, dof, start = 0.0, 0, 0
        for n in self.sizes or (len(self.y),):
            r = self.y[start:start + n]
            r = r - r.mean(0)
            acc = acc + r.T @ r
            dof += n - 1
            start += n
        return acc / dof, dof


def groups(measurements, kinds=("level",), activation: str | None = "linear") -> list[Group]:
    """Pool every block's samples by (activation, level, session), in that order.

    A session is one programming of the probe layer: a chip may draw its static
    errors (programming error, gain/offset) anew whenever it is programmed, as
    after a resumed calibration, so blocks of different sessions are never pooled.
    """
    pool: dict[tuple, list] = {}
    norms: dict[tuple, float] = {}
    for blk in measurements.blocks:
        p = blk.probe
        if p.kind not in kinds or (activation is not None and p.activation != activation):
            continue
        n2 = measurements.plan.input_norm2(p) if measurements.plan is not None else np.zeros(len(p.levels))
        for b, lv in enumerate(p.levels):
            key = (p.activation, p.weight, blk.session, lv, p.commons[b] if p.commons else None)
            pool.setdefault(key, []).append((blk.y[:, b, :], blk.t, blk.temperature))
            norms[key] = float(n2[b])
    out = []
    def order(item):   # weight, session, level, common input, activation
        act, w, ses, lv, common = item[0]
        return w, ses, lv, -np.inf if common is None else common, act

    for key, parts in sorted(pool.items(), key=order):
        act, w, ses, lv, common = key
        y = np.concatenate([p[0] for p in parts]).astype(np.float64)
        out.append(Group(act, lv, ses, y, np.array([p[1] for p in parts]), np.array([p[2] for p in parts]),
                         tuple(len(p[0]) for p in parts), common, w, norms[key]))
    return out


def merge_sessions(measurements, step: float = 0.0, p_min: float = 1e-3):
    """Treat programming sessions as one when the chip evidently kept its static errors.

    Two sessions of the same activation merge when every neuron's mean at their
    common levels agrees within the sampling errors (chi^2 test, p > ``p_min``):
    a chip that kept its gains and offsets across a reprogramming (a real chip,
    or the emulator with the same seed) is then fitted as if never interrupted,
    while one that drew new ones stays split.  Returns the measurements with
    the blocks' sessions relabelled.
    """
    from dataclasses import replace

    from scipy.stats import chi2

    def stats(blocks):
        out = {}
        for b in blocks:
            for j, sample in enumerate(b.probe.samples):
                out.setdefault(sample, []).append(b.y[:, j, :].astype(np.float64))
        return {lv: (np.concatenate(ys).mean(0), np.concatenate(ys).var(0, ddof=1), sum(len(y) for y in ys))
                for lv, ys in out.items()}

    by_key: dict[tuple, list] = {}
    for b in measurements.blocks:
        by_key.setdefault((b.probe.layer_key, b.session), []).append(b)
    label = {key: key[1] for key in by_key}
    keys = sorted(by_key, key=lambda k: (k[0], k[1]))
    q = step**2 / 12
    for i, ki in enumerate(keys):
        for kj in keys[:i]:
            if kj[0] != ki[0] or label[kj] != kj[1]:
                continue   # another probe layer, or kj itself merged into an earlier one
            a, b = stats(by_key[kj]), stats(by_key[ki])
            common = [lv for lv in a if lv in b]
            if not common:
                continue
            c2 = sum(float(np.sum((a[lv][0] - b[lv][0]) ** 2
                                  / (np.maximum(a[lv][1] / a[lv][2], q) + np.maximum(b[lv][1] / b[lv][2], q) + 1e-30)))
                     for lv in common)
            dof = len(common) * len(a[common[0]][0])
            if chi2.sf(c2, dof) > p_min:
                label[ki] = kj[1]
                break
    blocks = [replace(b, session=label[(b.probe.layer_key, b.session)]) for b in measurements.blocks]
    return replace(measurements, blocks=blocks)


def _quiet(var, step: float):
    """Noise narrower than half an ADC step: the outputs sit on one code, and Sheppard's step^2/12 fails."""
    return np.asarray(var) < step**2 / 4


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
        all_y = [b.y.ravel() for b in measurements.blocks]
        self.min_seen_ = float(min(y.min() for y in all_y))
        self.max_seen_ = float(max(y.max() for y in all_y))
        # the grid shows in the first ~2M values already; sorting all of them would only cost time
        head, n = [], 0
        for y in all_y:
            head.append(y)
            n += y.size
            if n >= 2_000_000:
                break
        vals = np.unique(np.concatenate(head)).astype(np.float64)
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
        tol = self.step_ * _RAIL + 1e-7 * (hi - lo)
        clipped = sum(int(np.count_nonzero((y <= lo + tol) | (y >= hi - tol))) for y in all_y)
        self.clip_fraction_ = clipped / sum(y.size for y in all_y)
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
        by_session: dict[int, list[Group]] = {}
        for g in groups(measurements):
            if not _clipped(g.y, self.output_range, self.step):
                by_session.setdefault(g.session, []).append(g)
        by_session = {k: v for k, v in by_session.items() if len(v) >= 2}
        if not by_session:
            raise HwloopError("calibration: fewer than two unclipped linear levels; cannot fit gain and offset")
        fits = {k: self._line(gs) for k, gs in by_session.items()}
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

    def _line(self, gs: list[Group]):
        """Per-neuron weighted straight line through the level means of one session."""
        a = np.array([g.level for g in gs])
        m = np.stack([g.y.mean(0) for g in gs])                                  # (L, N)
        var = np.stack([g.y.var(0, ddof=1) for g in gs])
        n = np.array([len(g.y) for g in gs])[:, None]
        # variance of each mean; where the noise is narrower than half a step the mean is off by up to half
        # a step whatever n is (a noiseless level reads one code): its error is then the rounding's, step^2/12
        q = self.step**2 / 12
        v = np.where(_quiet(var, self.step), np.maximum(var / n, q), var / n) + 1e-30
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
        return gain, off, np.sqrt(sw / det * infl), np.sqrt(swaa / det * infl), chi2, a


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


# -- transfer function ----------------------------------------------------------------
#: candidate families, tried in this order (the first wins a tie), each f(a) in float64 on a copy
FAMILIES = {name: (lambda a, name=name: response(name, np.array(a, dtype=np.float64)))
            for name in ("sigmoid", "tanh", "relu", "linear", "sin2", "exp_sat")}


class TransferFit:
    """Which transfer function each activation mode really has, its slope and its saturation.

    The mean curve over neurons, less the mean offset and divided by the mean
    gain's static part (``gain``: 1 unless the linear mode showed otherwise),
    is compared with
    ``scale * f(slope * a)`` for every family in ``FAMILIES`` (least squares);
    the best family wins.  Learned per mode: ``results_[mode] = {function,
    slope, scale, slope_stderr, scale_stderr, rms}``; ``saturation`` is the
    largest output the fitted curve reaches (``scale`` for sigmoid/tanh).

    ``pre_var(a)``: when the noise sits before the transfer function, the
    variance of the noisy pre-activation at ``a``; the mean curve is then
    ``scale * E[f(slope * (a + n))]`` (Gauss-Hermite), since a curved f turns
    noise into a shift of the mean.
    """

    def __init__(self, offset: float = 0.0, gain: float = 1.0, gain_sem: float = 0.0, offset_sem: float = 1e-3,
                 output_range: tuple[float, float] | None = None, step: float = 0.0, pre_var=None):
        self.pre_var = pre_var
        self.offset = float(offset)
        self.offset_sem = max(float(offset_sem), 1e-9)
        self.gain = float(gain)
        self.gain_sem = float(gain_sem)   # relative uncertainty of the mean gain (finite number of neurons)
        self.output_range = output_range
        self.step = step

    def fit(self, measurements) -> "TransferFit":
        self.results_, self.curves_ = {}, {}
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
            # a (nearly) noiseless level reads one ADC code: its mean is off by up to half a step
            quiet = _quiet([np.mean(g.y.var(0)) for g in gs], self.step)
            err = np.maximum(np.where(quiet, np.maximum(err, self.step / np.sqrt(12)), err), 1e-9)
            best = None
            for fam, f in FAMILIES.items():
                sd = np.sqrt(np.maximum(self.pre_var(a), 0.0)) if self.pre_var is not None else np.zeros_like(a)
                r = _fit_family(f, fam in ("relu", "linear"), a, h, err, self.offset_sem, sd)
                if r is not None and (best is None or r["rms"] < best["rms"]):
                    best = dict(r, function=fam)
                    best["scale_stderr"] = float(np.hypot(r["scale_stderr"], self.gain_sem * r["scale"]))
                    if fam in ("relu", "linear"):
                        best["slope_stderr"] = float(np.hypot(r["slope_stderr"], self.gain_sem * r["slope"]))
            if best is not None:
                self.curves_[mode] = (a, h, err)
                best["saturation"] = float(best["scale"] * np.max(np.abs(FAMILIES[best["function"]](best["slope"] * a))))
                self.results_[mode] = best
        return self


def _fit_family(f, one_param: bool, a, h, err, offset_sem: float, sd=None) -> dict | None:
    """Least squares of ``scale * f(slope * a) + c`` to the curve ``h`` (averaged over ``a + sd * z`` when sd).

    ``c`` absorbs the difference between this programming's mean offset and the
    linear mode's (chips may draw offsets anew at each programming); it is held
    near 0 by a Gaussian prior of width ``offset_sem``, without which tanh and
    a shifted sigmoid could not be told apart.  relu/linear: ``scale * slope``
    is one parameter (reported as the slope).
    """
    from scipy.optimize import least_squares

    z, wz = np.polynomial.hermite_e.hermegauss(15)
    wz = wz / wz.sum()
    pts = a[:, None] + (np.zeros_like(a) if sd is None else sd)[:, None] * z[None, :]   # (levels, nodes)

    def model(p):
        if one_param:
            return p[0] * (f(pts) @ wz) + p[1]
        return p[0] * (f(p[1] * pts) @ wz) + p[2]

    def resid(p):
        return np.append((model(p) - h) / err, p[-1] / offset_sem)

    p0 = [1.0, 0.0] if one_param else [1.0, 1.0, 0.0]
    try:
        r = least_squares(resid, p0, method="lm", max_nfev=400)
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

    def __init__(self, noise: "NoiseFit", transfer: "TransferFit", gain: float = 1.0,
                 output_range: tuple[float, float] | None = None, step: float = 0.0):
        self.noise, self.transfer, self.gain = noise, transfer, float(gain)
        self.output_range, self.step = output_range, step

    def fit(self, measurements) -> "PlacementFit":
        D = self.noise.intensities_
        q = self.step**2 / 12
        chi = {"post": 0.0, "pre": 0.0}
        used = 0
        for mode, r in self.transfer.results_.items():
            if r["function"] in ("linear", "relu"):
                continue  # a constant slope cannot tell the two apart
            f = FAMILIES[r["function"]]
            for g in groups(measurements, kinds=("act",), activation=mode):
                if _clipped(g.y, self.output_range, self.step):
                    continue
                C, dof = g.within_block_cov()
                v = float(np.mean(np.diag(C))) - q
                x = g.y.mean(0)
                a, eps = g.level, 1e-4
                dh = r["scale"] * (f(np.array([r["slope"] * (a + eps)])) - f(np.array([r["slope"] * (a - eps)])))[0] / (2 * eps)
                v_post = D["D_A"] + D["D_AC"] + (D["D_M"] + D["D_MC"]) * np.mean(x**2) + D["shot"] * np.mean(np.abs(x))
                lin = self.gain * a   # what the linear mode's output would be at this pre-activation
                v_lin = D["D_A"] + D["D_AC"] + (D["D_M"] + D["D_MC"]) * lin**2 + D["shot"] * abs(lin)
                v_pre = dh**2 * v_lin / self.gain**2
                err = max(v, 0.0) * np.sqrt(2.0 / (dof * C.shape[0])) + q + 1e-30  # + the rounding's own share
                chi["post"] += ((v - v_post) / err) ** 2
                chi["pre"] += ((v - v_pre) / err) ** 2
                used += 1
        self.chi2_ = {k: c / max(1, used) for k, c in chi.items()}
        self.identified_ = used >= 3
        self.placement_ = min(chi, key=chi.get) if self.identified_ else "post"
        return self


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
        session = np.array([b.session for b in blocks])
        z_max = 0.0
        for xname, x in (("s", t), ("K", temp)):
            if not np.all(np.isfinite(x)) or np.ptp(x) <= 0:
                continue
            for yname, y, e in (("offset", off, e_o), ("gain", gain, e_g)):
                slope, se = _line_slope(x, y, e, session)
                setattr(self, f"{yname}_per_{xname}_", slope)
                setattr(self, f"{yname}_per_{xname}_stderr_", se)
                z_max = max(z_max, abs(slope) / se if se > 0 else 0.0)
        self.significant_ = z_max > self.z
        return self


def _line_slope(x: np.ndarray, y: np.ndarray, e: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """Weighted slope of y on x with one intercept per group (programming session), and its stderr.

    The stderr is inflated by the reduced chi^2 when that exceeds 1.
    """
    w = 1.0 / np.maximum(e, 1e-30) ** 2
    xc, yc = x.astype(float).copy(), y.astype(float).copy()
    for gid in np.unique(group):
        m = group == gid
        xc[m] -= np.sum(w[m] * x[m]) / np.sum(w[m])
        yc[m] -= np.sum(w[m] * y[m]) / np.sum(w[m])
    sxx = float(np.sum(w * xc * xc))
    if sxx <= 0:
        return 0.0, 0.0
    slope = float(np.sum(w * xc * yc) / sxx)
    dof = max(1, len(x) - 1 - len(np.unique(group)))
    chi2 = float(np.sum(w * (yc - slope * xc) ** 2) / dof)
    return slope, float(np.sqrt(max(1.0, chi2) / sxx))


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
    go = GainOffsetFit(adc.range_, adc.step_).fit(measurements)
    plan = measurements.plan
    read = ReadNoiseFit(chip.weight_max, 1.0 + go.gain_spread_**2, adc.step_, output_range=adc.range_).fit(measurements)
    read_var = (lambda g: read.variance(plan.weight, g.norm2)) if read.significant_ else None
    noise = NoiseFit(go.gain_by_session_, go.offset_by_session_, adc.quantisation_variance_, adc.range_,
                     adc.step_, read_var=read_var).fit(measurements)
    # the mean over a chip's neurons is itself a sample (and a chip may draw its neurons at each programming)
    n = len(go.gain_)
    transfer = TransferFit(go.mean_offset_, gain_sem=go.gain_spread_ / np.sqrt(n),
                           offset_sem=np.hypot(go.offset_spread_ * np.sqrt(2 / n), go.offset_stderr_.mean()),
                           output_range=adc.range_, step=adc.step_).fit(measurements)
    drift = DriftFit(output_range=adc.range_, step=adc.step_).fit(measurements)
    placement = PlacementFit(noise, transfer, go.mean_gain_, adc.range_, adc.step_).fit(measurements)
    if placement.placement_ == "pre":   # refit the curves with the noise where it is: before the transfer
        D = noise.intensities_
        G2 = go.mean_gain_**2

        def pre_var(a):
            return (D["D_A"] + D["D_AC"]) / G2 + (D["D_M"] + D["D_MC"]) * a**2

        transfer = TransferFit(go.mean_offset_, gain_sem=go.gain_spread_ / np.sqrt(n),
                               offset_sem=np.hypot(go.offset_spread_ * np.sqrt(2 / n), go.offset_stderr_.mean()),
                               output_range=adc.range_, step=adc.step_, pre_var=pre_var).fit(measurements)
    return CalibrationFit(adc, go, noise, transfer, drift, placement, read)
