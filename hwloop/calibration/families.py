"""Which transfer-function family a measured curve has: fits of every family, then an honest choice.

A more flexible family always fits at least as well as a simpler one it
contains: ``scale * (1 - exp(-slope * a))`` with slope -> 0 and scale * slope
fixed *is* a ReLU on a >= 0, ``scale * tanh(slope * a)`` with slope -> 0 a
straight line.  Picking the lowest residual therefore picks the degenerate,
ill-conditioned curve whenever the chip is the simpler one (slope 0.0046 +-
0.0023, scale 222 +- 110 for a ReLU).  So the choice here

1. fits every family of ``FAMILIES`` (several starts each, scipy's
   least squares, errors from the Jacobian);
2. marks a family *degenerate* when it reduces to another at a parameter
   limit (``LIMITS``) and the likelihood-ratio test does not reject that
   simpler family (``P_NESTED``), or when a parameter's relative standard
   error exceeds ``MAX_REL_SE``: it is then reported as "indistinguishable
   from <family>" and never chosen;
3. scores the rest by the quasi-AIC, ``chi^2 / c + 2 k`` (``c``: the
   overdispersion, the smallest reduced chi^2 of any family when above 1, so
   a curve no family fits exactly does not make every small difference look
   significant), and keeps the family the mode is named for unless another is
   better by more than ``MARGIN`` (Burnham & Anderson: a difference above 10
   leaves the worse model essentially no support).

Every family's fit quality is kept (``candidates``) for the report.
"""

from __future__ import annotations

import numpy as np

from ..layer import response



def _family(name: str):
    if name == "sigmoid":   # scipy's: the model's (torch) pays a call overhead the many small fits notice
        from scipy.special import expit

        return lambda a: expit(np.asarray(a, dtype=np.float64))
    return lambda a: response(name, np.array(a, dtype=np.float64))


#: candidate families, each f(a) in float64 on a copy
FAMILIES = {name: _family(name) for name in ("sigmoid", "tanh", "relu", "linear", "sin2", "exp_sat")}
#: families whose scale and slope are one parameter (f(c a) = c f(a)): fitted as slope and offset only
HOMOGENEOUS = ("relu", "linear")
#: a family that becomes another at a parameter limit (slope -> 0 with scale * slope fixed)
LIMITS = {"exp_sat": "relu", "tanh": "linear"}
#: a challenger must beat the mode's own family by more than this quasi-AIC
MARGIN = 10.0
#: nested families: the flexible one is needed only when the simpler is rejected at this level
P_NESTED = 1e-3
#: a fit whose slope or scale is known worse than this (relative standard error) is ill-conditioned
MAX_REL_SE = 0.25
#: starting slopes of the non-homogeneous fits, smallest first (the first ones reach a family's slope -> 0
#: limit); a later start replaces an earlier one only when it fits better by ``_TIE`` in chi^2, so of two
#: curves the data cannot tell apart (sin^2 at slope s and pi - s on levels one apart) the slower one is kept
_STARTS = (1e-6, 0.005, 0.05, 0.3, 1.0, 3.0)
_TIE = 1e-3


def fit_family(name: str, a: np.ndarray, h: np.ndarray, err: np.ndarray, offset_sem: float,
               sd: np.ndarray | None = None) -> dict | None:
    """Weighted least squares of ``scale * f(slope * a) + c`` to ``h`` (averaged over ``a + sd * z`` when sd).

    ``c`` absorbs the difference between this programming's mean offset and the
    linear mode's; it is held near 0 by a Gaussian prior of width ``offset_sem``,
    without which tanh and a shifted sigmoid could not be told apart.
    Homogeneous families (relu, linear) fit ``slope`` and ``c`` only.  Returns
    the parameters, their standard errors, ``chi2`` (prior included), ``k``
    (parameters) and ``dof``; None when no start converged.
    """
    from scipy.optimize import least_squares

    f = FAMILIES[name]
    z, wz = np.polynomial.hermite_e.hermegauss(15)
    wz = wz / wz.sum()
    pts = a[:, None] + (np.zeros_like(a) if sd is None else sd)[:, None] * z[None, :]   # (levels, nodes)
    one = name in HOMOGENEOUS

    def model(p):
        return p[0] * (f(pts) @ wz) + p[1] if one else p[0] * (f(p[1] * pts) @ wz) + p[2]

    def resid(p):
        return np.append((model(p) - h) / err, p[-1] / offset_sem)

    best = None
    for s0 in (1.0,) if one else _STARTS:
        shape = f(s0 * pts) @ wz
        w = 1 / err**2   # the scale that fits best at this slope: a weighted line through the origin
        scale0 = float(np.sum(w * shape * h) / max(np.sum(w * shape * shape), 1e-300)) or 1.0
        p0 = [1.0, 0.0] if one else [scale0, s0, 0.0]
        try:
            r = least_squares(resid, p0, method="lm", x_scale="jac", max_nfev=600)
        except ValueError:
            continue
        if np.all(np.isfinite(r.x)) and (best is None or 2 * r.cost < 2 * best.cost - _TIE):
            best = r
    if best is None:
        return None
    try:
        cov = np.linalg.inv(best.jac.T @ best.jac)
    except np.linalg.LinAlgError:
        cov = np.full((len(best.x), len(best.x)), np.inf)
    se = np.sqrt(np.abs(np.diag(cov)))
    chi2 = float(2 * best.cost)
    k = len(best.x)
    common = dict(chi2=chi2, k=k, dof=max(1, len(a) + 1 - k), offset=float(best.x[-1]),
                  rms=float(np.sqrt(np.mean(((model(best.x) - h) / err) ** 2))))
    if one:
        return dict(slope=float(best.x[0]), scale=1.0, slope_stderr=float(se[0]), scale_stderr=0.0, **common)
    return dict(slope=float(best.x[1]), scale=float(best.x[0]), slope_stderr=float(se[1]),
                scale_stderr=float(se[0]), **common)


def select_family(mode: str, fits: dict[str, dict]) -> tuple[str, dict[str, dict], str]:
    """Choose among fitted families for an activation ``mode`` (see the module doc).

    Returns ``(family, candidates, note)``: candidates map every family to its
    fit quality (chi2, dof, qaic, delta_qaic against the chosen one) and its
    ``status`` ("chosen", "fits worse", "indistinguishable from <family>",
    "ill-conditioned"); ``note`` says in words why the choice was made.
    """
    from scipy.stats import chi2 as chi2_dist

    c_hat = max(1.0, min(r["chi2"] / r["dof"] for r in fits.values()))
    status: dict[str, str] = {}
    for name, r in fits.items():
        simple = LIMITS.get(name)
        if simple in fits:
            gain = (fits[simple]["chi2"] - r["chi2"]) / c_hat
            if gain < chi2_dist.isf(P_NESTED, r["k"] - fits[simple]["k"]):
                status[name] = f"indistinguishable from {simple}"
                continue
        rel = max(r["slope_stderr"] / max(abs(r["slope"]), 1e-300),
                  r["scale_stderr"] / max(abs(r["scale"]), 1e-300) if name not in HOMOGENEOUS else 0.0)
        if not rel <= MAX_REL_SE:
            status[name] = "ill-conditioned"
    qaic = {name: r["chi2"] / c_hat + 2 * r["k"] for name, r in fits.items()}
    own = mode if mode in fits else None
    if own is not None and own in status and LIMITS.get(own) in fits:
        own = LIMITS[own]   # the mode's own family sits at its limit: the simpler family describes it
    viable = [n for n in fits if n not in status]
    best = min(viable or list(fits), key=qaic.get)
    if own is None:
        chosen, why = best, f"lowest quasi-AIC of {len(viable)} well-determined families"
    elif qaic[own] - qaic[best] > MARGIN:
        chosen, why = best, f"{best} fits better than {mode} by {qaic[own] - qaic[best]:.1f} in quasi-AIC"
    else:
        chosen = own
        why = (f"{mode} {status[mode]}" if mode != own else
               f"{mode}: no other family better by more than {MARGIN:g} in quasi-AIC")
    cands = {}
    for name, r in fits.items():
        st = "chosen" if name == chosen else status.get(name, "fits worse")
        cands[name] = {"chi2": r["chi2"], "dof": r["dof"], "qaic": qaic[name], "delta_qaic": qaic[name] - qaic[chosen],
                       "slope": r["slope"], "scale": r["scale"], "slope_stderr": r["slope_stderr"],
                       "scale_stderr": r["scale_stderr"], "status": st}
    flagged = [f"{n} {s}" for n, s in status.items() if s.startswith("indistinguishable")]
    note = why + (f"; {', '.join(flagged)}" if flagged and not why.endswith(flagged[0]) else "")
    return chosen, cands, note
