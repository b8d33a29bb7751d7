"""Where to spend repetitions: tailored multi-execution from per-site midpoints.

Averaging k noisy executions of a site divides its additive noise by sqrt(k).
Given each site's midpoint mu and a total budget of executions, a scheme gives
each site k_i >= 1 with sum k_i == budget; 1/mu^2 equalises s/sqrt(k)/mu.
The allocation is then evaluated under global noise, drawing k_i noisy copies
at site i and averaging them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cf import decode_attrs
from ..data import Dataset
from ..errors import HwloopError
from .evaluate import SiteModel, accuracy
from .sites import Noise

SCHEMES = ("uniform", "inv_mu", "inv_mu2", "inv_sqrt_mu", "log", "rank")


def scheme_weights(mu: np.ndarray, scheme: str) -> np.ndarray:
    """Relative share of the budget per site; sites that never reach their midpoint (inf) get the least."""
    mu = np.asarray(mu, dtype=np.float64)
    if np.any(mu <= 0) or np.any(np.isnan(mu)):
        raise HwloopError("midpoints must be positive numbers (inf for 'not reached')")
    finite = np.isfinite(mu)
    if scheme == "uniform":
        return np.ones_like(mu)
    if scheme == "inv_mu":
        return 1.0 / mu
    if scheme == "inv_mu2":
        return 1.0 / mu ** 2
    if scheme == "inv_sqrt_mu":
        return 1.0 / np.sqrt(mu)
    if scheme == "log":
        top = mu[finite].max() if finite.any() else 1.0
        return np.where(finite, 1.0 + np.log(top / np.where(finite, mu, 1.0)), 0.0)
    if scheme == "rank":
        order = np.argsort(-mu, kind="stable")        # least fragile first
        w = np.empty_like(mu)
        w[order] = np.arange(1, len(mu) + 1)
        return w
    raise HwloopError(f"allocation scheme {scheme!r}: unknown (known: {', '.join(SCHEMES)})")


def allocate(mu: np.ndarray, budget: int, scheme: str) -> np.ndarray:
    """Integer repetitions per site: at least 1 each, summing exactly to ``budget``."""
    w = scheme_weights(mu, scheme)
    n = len(w)
    if budget < n:
        raise HwloopError(f"budget {budget}: needs at least one execution per site ({n} sites)")
    if w.sum() <= 0:
        w = np.ones(n)
    target = budget * w / w.sum()
    k = np.maximum(1, np.floor(target)).astype(np.int64)
    while k.sum() < budget:                       # largest shortfall first
        k[int(np.argmax(target - k))] += 1
    while k.sum() > budget:                       # take back where the excess is largest
        excess = np.where(k > 1, k - target, -np.inf)
        k[int(np.argmax(excess))] -= 1
    return k


@dataclass(frozen=True)
class PlanResult:
    """One scheme's allocation and its accuracy per repeat."""

    scheme: str
    allocation: np.ndarray
    accuracy: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.accuracy.mean())


def evaluate_plans(model: SiteModel, data: Dataset, mu: np.ndarray, budget: int, noise: Noise,
                   schemes: tuple[str, ...] = SCHEMES, repeats: int = 3, seed: int = 0) -> list[PlanResult]:
    """Accuracy of each scheme under global ``noise``; repeat r uses the same key (seed, r)
    for every scheme, so schemes are compared on common random numbers."""
    if len(mu) != len(model.sites):
        raise HwloopError(f"{len(mu)} midpoints for a model with {len(model.sites)} sites")
    results = []
    for scheme in schemes:
        k = allocate(mu, budget, scheme)
        accs = [accuracy(model.run({i: (noise, int(k[i])) for i in range(len(k))},
                                   np.random.default_rng([seed, r]), x=data.x), data.y)
                for r in range(repeats)]
        results.append(PlanResult(scheme, k, np.array(accs)))
    return results


def plan_from_sweep(sweep: str, budget: int, sigma: float, schemes: tuple[str, ...] = SCHEMES,
                    repeats: int = 3, seed: int = 0) -> list[PlanResult]:
    """Midpoints from an evaluation-only walking sweep, evaluated on its model and data."""
    from ..data import load_data
    from .plots import sweep_midpoints
    from .sweep import open_sweep

    ds = open_sweep(sweep)
    attrs = decode_attrs(ds.attrs)
    s = attrs["settings"]
    if s["train_noise"] or s["mode"] != "walk" or "model" not in attrs:
        raise HwloopError(f"{sweep}: planning needs an evaluation-only walking sweep of an ONNX model")
    walked, n_sites = [int(k) for k in ds.site.values], len(attrs["sites"])
    if walked != list(range(n_sites)):
        raise HwloopError(f"{sweep}: walked site(s) {','.join(map(str, walked))} of the model's {n_sites} (--sites); "
                          "a plan shares the budget among every site, so it needs every site's midpoint: "
                          "walk the model again without --sites")
    mu = np.array([m.value for m in sweep_midpoints(ds)])
    noise = Noise(s["noise"], sigma, s["ratio"], s["correlated"])
    return evaluate_plans(SiteModel(attrs["model"]), load_data(s["data"]), mu, budget, noise,
                          schemes, repeats, seed)


def plan_lines(results: list[PlanResult], budget: int, sigma: float, repeats: int) -> list[str]:
    """``walk plan``'s output: a header, one line per scheme (accuracy ± s.e.m. over repeats), a recommendation."""
    from ..numbers import mean_sem

    n = len(results[0].allocation) if results else 0
    out = [f"repetition plans: {budget} executions over {n} sites, global noise std {sigma:g}, "
           f"accuracy as mean ± standard error over {repeats} noise draw(s)",
           f"{'scheme':<12} {'accuracy':>8} {'± s.e.m.':>9}  repetitions per site (in site order)"]
    for r in results:
        m, se = mean_sem(r.accuracy)
        se_text = f"{se:>9.4f}" if np.isfinite(se) else f"{'n/a':>9}"
        out.append(f"{r.scheme:<12} {m:>8.4f} {se_text}  {' '.join(map(str, r.allocation))}")
    if results:
        best = max(results, key=lambda r: r.mean)
        base = next((r for r in results if r.scheme == "uniform"), None)
        gain = _against_uniform(best, base) if base is not None and base is not best else ""
        out.append(f"recommended: {best.scheme} (highest mean accuracy{gain}; {SCHEME_WORDS.get(best.scheme, '')})")
    return out


def _against_uniform(best: PlanResult, base: PlanResult) -> str:
    """How far the best scheme is ahead of uniform, and whether the draws can tell them apart."""
    from ..numbers import mean_sem

    diff = best.mean - base.mean
    both = float(np.hypot(mean_sem(best.accuracy)[1], mean_sem(base.accuracy)[1]))
    text = f", {diff:+.4f} against uniform"
    if not np.isfinite(both):
        return text + " from one noise draw, so untested: give --repeats 5 or more"
    if diff <= 2 * both:
        return text + f", within two standard errors ({2 * both:.4f}): not distinguishable from uniform"
    return text


#: what each scheme does, in words
SCHEME_WORDS = {"uniform": "the same repetitions at every site", "inv_mu": "repetitions proportional to 1/midpoint",
                "inv_mu2": "repetitions proportional to 1/midpoint^2 (equalises noise relative to the midpoint)",
                "inv_sqrt_mu": "repetitions proportional to 1/sqrt(midpoint)",
                "log": "repetitions growing with log(largest midpoint / midpoint)",
                "rank": "repetitions by the rank of the site's fragility"}
