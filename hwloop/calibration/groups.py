"""Pooling calibration blocks into groups of one (activation, level, programming session).

Every estimator reads the measurements through ``groups``: all evaluations of
one pre-activation level, in one programming of the probe layer (a chip may
redraw its static errors when programmed again; ``merge_sessions`` joins the
sessions of a chip that evidently did not).  ``_quiet`` and ``_clipped`` say
which groups an estimator must leave out (noise below the ADC's resolution,
outputs on a rail).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
