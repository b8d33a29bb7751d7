"""Calibration to a stated precision: a pilot, then extensions designed from the Fisher information.

A fixed plan spends its budget whatever the chip: too much for a loose
request, too little for a tight one.  Here a small pilot (the designed plan at
a small budget) is measured and fitted; then, while some requested term's
relative standard error is above its target, an *extension* is designed from
the Fisher information of the current estimates and measured:

- the information one evaluation at level ``a`` carries about the intensities
  is ``X' S^-1 X``, with X the coefficients of the two quadratic statistics
  (W: independent part, U: common mode) in the intensities and S their
  covariance ``2 tr(A C B C)`` under the fitted covariance C of the outputs
  at that level (``NoiseFit``'s model, the current estimates plugged in);
- candidate designs (which levels a block holds, a level repeated to weight
  it: the ends and zero of the level range, the designed plan's levels, ...)
  are scored by the evaluations needed until every requested term's predicted
  standard error ``sqrt([(I_now + n i_design)^-1]_kk)`` meets its target;
  the cheapest is measured (``MARGIN``, at least ``MIN_SHARE`` of what was spent: an error estimated
  from the data scatters, and every extension costs a programming), capped by the budget and time left;
- everything is refitted and checked again (the estimates move).

A term the data cannot tell from zero (estimate below 2 standard errors) has
no relative error; it is met when its standard error is below the target
times the largest significant term of its kind (additive D_A, D_AC or
multiplicative D_M, D_MC), i.e. it is bounded to that share.

Each stage is its own calibration store (``STORE/stages/<k>``), crash-safe
like the first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HwloopError
from .plan import Plan, design_plan, extension_plan

#: the intensities a target may name
TERMS = ("D_A", "D_M", "D_AC", "D_MC", "shot")
_KIND = {"D_A": ("D_A", "D_AC"), "D_AC": ("D_A", "D_AC"), "D_M": ("D_M", "D_MC"), "D_MC": ("D_M", "D_MC"),
         "shot": ("shot",)}
#: an extension measures this much more than predicted, and at least this share of what was spent so far
MARGIN, MIN_SHARE = 1.2, 0.1
#: the pilot's size (evaluations), unless the budget is smaller
PILOT = 20_000
#: the most a calibration to a stated precision spends unless told (evaluations)
PRECISION_BUDGET = 2_000_000
#: most extensions before giving up on a target the estimates keep moving away from
MAX_STAGES = 6


@dataclass(frozen=True)
class Timing:
    """A chip's timing; default: the ANB manual's worst case (SCPI.md section 8)."""

    eval_s: float = 20e-6
    program_s: float = 50e-3
    per_weight_s: float = 1e-6

    def seconds(self, plan: Plan) -> float:
        """Bench time of ``plan``: its evaluations plus one programming per probe layer."""
        evals = sum(p.evaluations for p in plan.probes)
        layers = len({p.layer_key for p in plan.probes})
        return evals * self.eval_s + layers * (self.program_s + self.per_weight_s * plan.n_in * plan.n_out)


def parse_targets(text: str | float | dict) -> dict[str, float]:
    """``0.01`` (every intensity) or ``"D_A=0.01,D_MC=0.05"`` -> {term: relative standard error}."""
    if isinstance(text, dict):
        items = list(text.items())
    else:
        try:
            return dict.fromkeys(TERMS, _positive("target precision", float(text)))
        except ValueError:
            items = [part.split("=", 1) if "=" in part else (part, "") for part in str(text).split(",")]
    out = {}
    for term, value in items:
        term = str(term).strip()
        if term not in TERMS:
            raise HwloopError(f"target precision {text!r}: unknown term {term!r} (terms: {', '.join(TERMS)})")
        try:
            out[term] = _positive(f"target precision of {term}", float(value))
        except (TypeError, ValueError):
            raise HwloopError(f"target precision {text!r}: {term} needs a number, e.g. {term}=0.01") from None
    return out


def _positive(what: str, v: float) -> float:
    if not 0 < v < 1:
        raise HwloopError(f"{what}: {v:g} must be a relative standard error between 0 and 1 (0.01 = 1%)")
    return v


def precision_status(noise, targets: dict[str, float]) -> dict[str, dict]:
    """Per requested term: estimate, stderr, relative error, the standard error needed, reached or not."""
    est, se = noise.intensities_, noise.stderr_
    significant = {k: est[k] > 2 * se[k] for k in TERMS}
    out = {}
    for k, target in targets.items():
        if k == "shot" and not noise.shot_fitted_:
            continue
        if significant[k]:
            scale, how = est[k], "relative"
        else:
            scale = max([est[j] for j in _KIND[k] if significant[j]], default=0.0)
            how = "bound"
        if scale <= 0:
            continue   # nothing of this kind on the chip: no precision to reach
        need = target * scale
        out[k] = {"estimate": float(est[k]), "stderr": float(se[k]), "relative": float(se[k] / scale),
                  "target": target, "need_stderr": float(need), "reached": bool(se[k] <= need), "how": how}
    return out


# -- the Fisher information ------------------------------------------------------------------
def level_information(level: float, gains: np.ndarray, offsets: np.ndarray, D: dict, q: float,
                      cols: list[int]) -> np.ndarray:
    """Information about the intensities (``cols`` of D_A, D_M, D_AC, D_MC, shot) of one evaluation at ``level``."""
    g, o = np.asarray(gains, float), np.asarray(offsets, float)
    N = len(g)
    s = g * level + o
    one = np.ones(N)
    terms = [np.diag(one), np.diag(s**2), np.outer(one, one), np.outer(s, s), np.diag(np.abs(s))]
    D_vec = [max(float(D[k]), 0.0) for k in TERMS]
    C = sum(d * T for d, T in zip(D_vec, terms)) + max(q, 1e-18) * np.eye(N)
    A_U = np.full((N, N), 1.0 / N**2)
    A_W = np.eye(N) / N - A_U
    X = np.array([[np.sum(A * terms[c]) for c in cols] for A in (A_W, A_U)])
    AC = [A @ C for A in (A_W, A_U)]
    S = 2.0 * np.array([[np.sum(a * b.T) for b in AC] for a in AC])   # one evaluation (n - 1 -> 1)
    return X.T @ np.linalg.solve(S, X)


def evaluations_needed(info_now: np.ndarray, info_one: np.ndarray, need: np.ndarray, limit: float = 1e10) -> float:
    """Fewest further evaluations n with sqrt(diag((I_now + n I_one)^-1)) <= need; inf beyond ``limit``."""
    def ok(n: float) -> bool:
        try:
            cov = np.linalg.inv(info_now + n * info_one)
        except np.linalg.LinAlgError:
            return False
        return bool(np.all(np.sqrt(np.clip(np.diag(cov), 0, None)) <= need))

    if ok(0.0):
        return 0.0
    if not ok(limit):
        return math.inf
    lo, hi = 0.0, limit
    while hi - lo > max(1.0, 1e-3 * hi):
        mid = math.sqrt(max(lo, 1.0) * hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def candidate_designs(base: Plan) -> dict[str, tuple[float, ...]]:
    """Level sets an extension block may hold (a repeated level weighs double)."""
    levels = sorted({v for p in base.probes if p.kind == "level" for v in p.levels})
    lo, hi = levels[0], levels[-1]
    zero = min(levels, key=abs)
    return {"plan levels": tuple(levels), "ends and zero": (lo, zero, hi), "ends": (lo, hi),
            "zero-weighted": (lo, zero, zero, hi), "ends-weighted": (lo, lo, zero, hi, hi)}


def design_extension(fit, base: Plan, targets: dict[str, float]) -> tuple[str, tuple[float, ...], float]:
    """The cheapest candidate design and the evaluations it needs to meet every unmet target."""
    nf, go = fit.noise, fit.gain_offset
    cols = [i for i, k in enumerate(TERMS) if k != "shot" or nf.shot_fitted_]
    info_now = np.linalg.inv(nf.covariance_[np.ix_(cols, cols)] + 1e-300 * np.eye(len(cols)))
    return _cheapest(base, info_now, _needed(nf, targets, cols), go.gain_, go.offset_, nf.intensities_,
                     fit.adc.quantisation_variance_, cols)


def _needed(noise, targets: dict[str, float], cols: list[int]) -> np.ndarray:
    status = precision_status(noise, targets)
    return np.array([status[TERMS[c]]["need_stderr"] if TERMS[c] in status else np.inf for c in cols])


def _cheapest(base: Plan, info_now, need, gains, offsets, D: dict, q: float, cols: list[int]):
    best = ("", (), math.inf)
    for name, levels in candidate_designs(base).items():
        info = np.mean([level_information(a, gains, offsets, D, q, cols) for a in levels], 0)
        n = evaluations_needed(info_now, info, need)
        if n < best[2]:
            best = (name, levels, n)
    return best


def predict_from_prior(info, targets, prior: dict, pilot_plan: Plan, timing: Timing) -> str:
    """The evaluations and bench time a calibration to ``targets`` will take if the chip is as ``prior`` says.

    ``prior``: an earlier calibrated profile of the chip (its mapping); the pilot's information is computed
    from its intensities, gains and ADC step, then the cheapest extension as during the calibration.
    """
    from types import SimpleNamespace

    unc = prior.get("uncertainty") or {}
    if "noise" not in unc:
        raise HwloopError("--prior: not a calibrated profile (no 'uncertainty' section)")
    shot = bool(unc.get("noise_fit", {}).get("shot_fitted"))
    cols = [i for i, k in enumerate(TERMS) if k != "shot" or shot]
    D = {k: float(unc["noise"].get(k, {}).get("estimate", 0.0)) for k in TERMS}
    n = pilot_plan.n_out
    per = prior.get("provenance", {}).get("per_neuron", {})
    g = np.array(per["gain"], float) if len(per.get("gain", [])) == n else np.full(n, unc["gain_offset"]["mean_gain"])
    o = np.array(per["offset"], float) if len(per.get("offset", [])) == n else np.zeros(n)
    q = float(unc.get("adc", {}).get("step") or 0.0) ** 2 / 12
    info_now = sum(p.repeats * level_information(a, g, o, D, q, cols)
                   for p in pilot_plan.probes if p.kind == "level" for a in p.levels)
    se = np.sqrt(np.diag(np.linalg.inv(info_now)))
    noise = SimpleNamespace(intensities_=D, shot_fitted_=shot,
                            stderr_={**dict.fromkeys(TERMS, 0.0), **{TERMS[c]: float(v) for c, v in zip(cols, se)}})
    name, _, more = _cheapest(pilot_plan, info_now, _needed(noise, targets, cols), g, o, D, q, cols)
    if not math.isfinite(more):
        return "as the prior calibration says, no design reaches that precision"
    n0 = sum(p.evaluations for p in pilot_plan.probes)
    more = 0 if more == 0 else max(1000, math.ceil(MARGIN * more), int(MIN_SHARE * n0))
    seconds = timing.seconds(pilot_plan) + more * timing.eval_s + (
        timing.program_s + timing.per_weight_s * pilot_plan.n_in * pilot_plan.n_out if more else 0.0)
    return (f"if the chip is as the prior calibration says: {n0 + more:,} evaluations (pilot {n0:,}"
            + (f", one extension of {more:,} at the {name} levels" if more else "") + f"): {seconds:.3g} s at the "
            "chip's timing")


# -- the sequential calibration --------------------------------------------------------------
@dataclass
class PrecisionResult:
    """What ``calibrate_to_precision`` did: the profile and fit, every stage, and whether it met the targets."""

    profile: object
    fit: object
    measurements: object
    status: dict[str, dict]
    reached: bool
    message: str
    stages: list[dict] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return int(sum(s["evaluations"] for s in self.stages))


@dataclass(frozen=True)
class PrecisionSettings:
    """How ``calibrate_to_precision`` measures: the store, the ``targets`` (relative standard errors), the
    budget of evaluations and ``max_seconds`` it may spend, the seed, ``overwrite``, the profile's ``name``,
    the ``pilot``'s size, the chip's ``timing`` (for the report) and a ``progress(done, total)`` callback."""

    store: str | Path
    targets: object
    budget: int = PRECISION_BUDGET
    max_seconds: float | None = None
    seed: int = 0
    overwrite: bool = False
    name: str | None = None
    pilot: int = PILOT
    timing: Timing = Timing()
    progress: Callable[[int, int], None] | None = None


def calibrate_to_precision(chip, out: str | Path, settings: PrecisionSettings | None = None,
                           **options) -> PrecisionResult:
    """Measure a pilot, then extend until every target is met or the budget or time runs out; write the profile.

    ``options`` are ``PrecisionSettings``' fields as keywords (``store=...``, ``targets=...``), on their own or
    replacing those of ``settings``."""
    from . import _fit_and_write
    from .fit import fit_all
    from .measure import CalibrationStore, measure

    s = replace(settings, **options) if settings is not None else PrecisionSettings(**options)
    s = replace(s, targets=parse_targets(s.targets), store=Path(s.store))
    t0 = time.monotonic()
    base = design_plan(chip.info, min(s.pilot, s.budget), s.seed)
    cal = CalibrationStore.create(s.store, base, {"idn": chip.info.idn, "targets": s.targets}, overwrite=s.overwrite)
    meas = _measured(chip, cal, measure, s.progress, 0)
    stages = [_stage_row(0, "pilot (designed plan)", base, meas, s.timing)]
    fit = fit_all(meas)
    why = ""
    for k in range(1, MAX_STAGES + 1):
        if all(st["reached"] for st in precision_status(fit.noise, s.targets).values()):
            break
        design, levels, n = design_extension(fit, base, s.targets)
        spent = sum(st["evaluations"] for st in stages)
        n = max(1000, math.ceil(MARGIN * n), int(MIN_SHARE * spent)) if math.isfinite(n) else s.budget - spent
        rate = (time.monotonic() - t0) / max(1, spent)      # this bench's wall seconds per evaluation so far
        left_t = math.inf if s.max_seconds is None else s.max_seconds - (time.monotonic() - t0)
        cap = min(s.budget - spent, int(left_t / rate) if math.isfinite(left_t) else s.budget)
        if n > cap:
            why = "budget" if cap == s.budget - spent else "time limit"
            n = cap
        if n < 2 * len(levels):
            break
        plan = extension_plan(base, k, levels, n)
        scal = CalibrationStore.create(s.store / "stages" / str(k), plan, {"idn": chip.info.idn}, overwrite=False)
        more = _measured(chip, scal, measure, s.progress, k)
        stages.append(_stage_row(k, design, plan, more, s.timing))
        meas = _combined(meas, more)
        fit = fit_all(meas)
        if why:
            break
    status = precision_status(fit.noise, s.targets)
    reached = all(st["reached"] for st in status.values())
    prof, fit = _fit_and_write(meas, out, s.store, s.name)
    return PrecisionResult(prof, fit, meas, status, reached, _message(s, status, reached, why, stages, fit, base),
                           stages)


def _measured(chip, cal, measure, progress, stage: int):
    """Measure a stage's store; its sessions are numbered apart from the other stages'."""
    return _staged(measure(chip, cal, progress=progress), stage)


def _staged(m, stage: int):
    from dataclasses import replace

    return replace(m, blocks=[replace(b, session=b.session + 1000 * stage) for b in m.blocks])


def _combined(a, b):
    from dataclasses import replace

    return replace(a, blocks=a.blocks + b.blocks, attrs=dict(a.attrs, stages=a.attrs.get("stages", 1) + 1))


def with_stages(meas, store: str | Path):
    """The measurements of a store plus those of its extension stages (``STORE/stages/<k>``), as fitted."""
    from .measure import CalibrationStore

    root = Path(store) / "stages"
    for k in sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.is_dir() else ():
        meas = _combined(meas, _staged(CalibrationStore(root / str(k)).measurements(), k))
    return meas


def _stage_row(k: int, design: str, plan: Plan, meas, timing: Timing) -> dict:
    return {"stage": k, "design": design, "levels": sorted(set(plan.design)) if plan.design else None,
            "evaluations": meas.evaluations, "bench_s": timing.seconds(plan),
            "measure_s": float(meas.attrs.get("measure_s", float("nan")))}


def _message(s: PrecisionSettings, status: dict, reached: bool, why: str, stages: list[dict], fit, base: Plan) -> str:
    """One line: what was reached, or what stopped it and about how much more would reach it."""
    spent = sum(st["evaluations"] for st in stages)
    bench = sum(st["bench_s"] for st in stages)
    terms = ", ".join(f"{k} {100 * st['relative']:.2g}%{' (bound)' if st['how'] == 'bound' else ''} "
                      f"(asked {100 * st['target']:.2g}%)" for k, st in status.items())
    head = (f"{len(stages)} stage{'s' if len(stages) > 1 else ''}, {spent:,} evaluations "
            f"({bench:.3g} s at the chip's timing)")
    if reached:
        return f"target precision reached in {head}: {terms}"
    missing = ", ".join(k for k, st in status.items() if not st["reached"])
    _, _, more = design_extension(fit, base, s.targets)
    extra = (f"; about {int(more):,} more evaluations ({more * s.timing.eval_s:.3g} s at the chip's timing) would "
             "reach it" if math.isfinite(more) else "")
    limit = (f"the budget of {s.budget:,} evaluations" if why == "budget" else
             f"the time limit of {s.max_seconds:g} s" if why == "time limit" else f"{MAX_STAGES} extensions")
    return f"target precision NOT reached for {missing}: stopped at {limit} after {head}: {terms}{extra}"


def dry_run(info, targets=None, budget: int | None = None, seed: int = 0, pilot: int = PILOT,
            timing: Timing = Timing(), prior: dict | None = None) -> str:
    """What a calibration will measure and how long it takes at the chip's timing, without measuring."""
    from .plan import DEFAULT_BUDGET

    if targets is None:
        plan = design_plan(info, budget or DEFAULT_BUDGET, seed)
        n = sum(p.evaluations for p in plan.probes)
        return (f"plan: {len(plan.probes)} blocks, {n:,} evaluations on a {plan.n_out}x{plan.n_in} pattern, "
                f"{len({p.layer_key for p in plan.probes})} programmings: {timing.seconds(plan):.3g} s at the chip's "
                f"timing ({timing.eval_s * 1e6:g} us per evaluation, {timing.program_s * 1e3:g} ms + "
                f"{timing.per_weight_s * 1e6:g} us per weight per programming)")
    targets = parse_targets(targets)
    cap = budget or PRECISION_BUDGET
    plan = design_plan(info, min(pilot, cap), seed)
    n0 = sum(p.evaluations for p in plan.probes)
    t_cap = timing.seconds(plan) + (cap - n0) * timing.eval_s + MAX_STAGES * (
        timing.program_s + timing.per_weight_s * plan.n_in * plan.n_out)
    asked = ", ".join(f"{k} {100 * v:g}%" + (" (when found)" if k == "shot" else "") for k, v in targets.items())
    text = (f"target precision {asked}: pilot of {n0:,} evaluations ({timing.seconds(plan):.3g} s at the chip's "
            f"timing), then extensions designed from its estimates (their size depends on the chip's noise), "
            f"at most {cap:,} evaluations in all: at most {t_cap:.3g} s at the chip's timing")
    return text + ("\n" + predict_from_prior(info, targets, prior, plan, timing) if prior is not None else "")
