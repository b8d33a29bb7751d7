"""The advisor: every strategy and combination, predicted without sampling, ranked at a chip-cost budget.

The output noise is decomposed once (``decompose``); each candidate plan is
then a few weighted sums, so ranking a dozen candidates costs about one
clean forward pass and one backward pass of Jacobians.  The budget is a MAC
ratio (multiply-accumulates per inference over the original's): duplication
pays in array cells, multi-execution in repeated passes, ghosts in one column
each.  For each family the strongest setting within the budget is kept
(largest copy count, largest execution budget, best planner scheme).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..analysis.predict import LayerNoise
from ..errors import HwloopError
from ..profiles import load_profile
from ..walking.planner import SCHEMES, scheme_weights
from .decompose import (Operating, Terms, class_shares, decompose, evaluate, layer_shares, operating_points,
                        output_variance)
from .onnxedit import chain_next
from .plan import ADDRESSES, Plan, Strategy
from .transforms import allocate_execs, make_plan, midpoints

#: copies and executions tried at most per layer
_MAX_K = 16


@dataclass
class Context:
    """What every prediction of one model, profile and data set shares."""

    model: object
    noises: list[LayerNoise]
    op: Operating
    terms: list[Terms]


def model_inputs(model, data) -> np.ndarray:
    """``data`` (a spec, a ``Dataset`` or an array of samples) shaped as the model's input."""
    from ..data import Dataset, load_data
    from ..runner import model_input

    if isinstance(data, np.ndarray):
        return data
    return model_input(model, data if isinstance(data, Dataset) else load_data(data))


def as_profile(profile):
    """A loaded ``Profile`` from a profile, a name or a path."""
    return profile if hasattr(profile, "for_layer") else load_profile(profile)


def layer_noises(model, profile) -> list[LayerNoise]:
    """The noise of every analog layer under ``profile`` (as ``predict`` reads it)."""
    from ..analysis.predict import layer_noises as of_layers

    return of_layers(model.layers, [as_profile(profile)] * len(model.layers))[0]


def context(model, profile, data) -> Context:
    """Noise settings per layer, operating points and output-noise terms (the one expensive step)."""
    x = model_inputs(model, data)
    for k in range(len(model.layers) - 1):
        chain_next(model, k, "the advisor")
    noises = layer_noises(model, profile)
    op = operating_points(model, x)
    return Context(model, noises, op, decompose(model, noises, op))


@dataclass
class Advice:
    """Ranked candidates (``rows``), per-layer output-noise shares and what could not apply."""

    rows: list[dict]
    layer_names: list[str]
    shares: np.ndarray
    classes: np.ndarray
    dominant: list[int]
    budget: float
    not_applicable: list[str] = field(default_factory=list)


def _row(ctx: Context, plan: Plan, base: dict, budget: float) -> dict:
    ev = evaluate(ctx.terms, ctx.op, plan)
    cost = plan.cost()
    return {"label": plan.label, "snr_db": ev["snr_db"], "snr_gain": 10 ** ((ev["snr_db"] - base["snr_db"]) / 10),
            "flip_rate": ev["flip_rate"], "var": ev["var"], **cost,
            "within": cost["mac_ratio"] <= budget + 1e-9, "plan": plan}


def _widest(make, budget: float) -> Plan | None:
    """The plan of the largest k (2.._MAX_K) within the budget; k = 2 when even that exceeds it."""
    best = None
    for k in range(2, _MAX_K + 1):
        plan = make(k)
        if plan is None:
            return best
        if plan.cost()["mac_ratio"] > budget + 1e-9:
            return best or plan
        best = plan
    return best


def _fill_execs(ctx: Context, plan: Plan, budget: float) -> Plan | None:
    """``plan`` plus multi-execution: per planner scheme the largest execution budget within the MAC
    budget; the scheme with the least predicted output variance wins.  None when no extra execution fits."""
    shares = layer_shares(ctx.terms, plan)
    n = len(plan.execs)
    best, best_score = None, -np.inf
    cells = np.array([i * o for i, o in plan.new_widths()], dtype=np.float64)
    cap = budget * sum(i * o for i, o in plan.widths) + 1e-9
    for scheme in SCHEMES:
        def fits(total: int) -> Plan | None:
            p = plan.copy(execs=allocate_execs(plan, shares, total, scheme))
            return p if (cells * p.execs).sum() <= cap else None

        w = scheme_weights(midpoints(shares), scheme)     # the continuous allocation's total, as a first guess
        w = w / w.sum() if w.sum() > 0 else np.full(n, 1.0 / n)
        total = int(np.clip(np.floor(cap / max(float(cells @ w), 1e-300)), n + 1, n * _MAX_K))
        last = fits(total)
        while last is None and total > n + 1:             # step down to the first that fits ...
            total -= 1
            last = fits(total)
        while last is not None and total < n * _MAX_K and (p := fits(total + 1)) is not None:
            total, last = total + 1, p                    # ... or up to the last that does
        if last is not None and -output_variance(ctx.terms, last) > best_score:
            last.label = f"multi-exec:{total}:{scheme}"
            best, best_score = last, -output_variance(ctx.terms, last)
    if best is not None:
        best.label = best.label if plan.label == "none" else f"{plan.label}+{best.label}"
        best.notes.append(f"multi-exec: executions per layer {best.execs.tolist()}")
    return best


def _try(ctx: Context, specs: Sequence[Strategy], na: list[str]) -> Plan | None:
    try:
        return make_plan(ctx.model, specs, noises=ctx.noises, op=ctx.op, terms=ctx.terms)
    except HwloopError as e:
        na.append(f"{'+'.join(s.label for s in specs)}: {e}")
        return None


def candidates(ctx: Context, budget: float, na: list[str]) -> list[Plan]:
    """The plans worth ranking: none, each strategy alone at its strongest within budget, and combinations."""
    widths = [(l.n_in, l.n_out) for l in ctx.model.layers]
    out = [Plan.identity(widths)]
    ghost = _try(ctx, [Strategy("ghost")], na)
    dup = _widest(lambda k: _try(ctx, [Strategy("duplicate", k)], []), budget) if len(widths) > 1 else None
    if dup is None and len(widths) > 1:
        _try(ctx, [Strategy("duplicate", 2)], na)
    slope = _try(ctx, [Strategy("slope")], na)
    if slope is not None and np.all(slope.scale == 1.0):
        na.append("slope: no layer has a per-layer gain >= 1; nothing to rescale")
        slope = None
    out += [p for p in (ghost, dup, slope) if p is not None]
    out.append(_fill_execs(ctx, out[0], budget))
    if ghost is not None:
        gdup = _widest(lambda k: _try(ctx, [Strategy("ghost"), Strategy("duplicate", k)], []), budget)
        out += [gdup, _fill_execs(ctx, ghost, budget)]
        if gdup is not None and gdup.cost()["mac_ratio"] <= budget:
            out.append(_fill_execs(ctx, gdup, budget))
    if dup is not None and dup.cost()["mac_ratio"] <= budget:
        out.append(_fill_execs(ctx, dup, budget))
    seen, unique = set(), []
    for p in out:
        if p is not None and p.label not in seen:
            seen.add(p.label)
            unique.append(p)
    return unique


#: samples the advisor looks at by default: the ranking needs operating points that represent the data,
#: not all of them (tools/bench_mitigate.py prints the ranking from all samples beside it)
ADVISE_SAMPLES = 256


def advise(model, profile, data, budget: float = 2.0, samples: int | None = ADVISE_SAMPLES) -> Advice:
    """Rank every strategy and combination at ``budget`` (MAC ratio) by predicted output SNR.

    ``samples``: at most this many samples, evenly spaced through ``data`` (None: all).
    """
    if not budget >= 1.0:
        raise HwloopError(f"budget {budget}: a MAC ratio of at least 1 (the original model costs 1)")
    x = model_inputs(model, data)
    if samples is not None and len(x) > samples:
        x = x[np.linspace(0, len(x) - 1, samples).astype(np.int64)]
    ctx = context(model, profile, x)
    na: list[str] = []
    plans = candidates(ctx, budget, na)
    base = evaluate(ctx.terms, ctx.op, plans[0])
    rows = [_row(ctx, p, base, budget) for p in plans]
    rows.sort(key=lambda r: (not r["within"], -r["snr_db"]))
    order = np.argsort(-base["shares"])
    dominant = [int(i) for i in order[: int(np.searchsorted(np.cumsum(base["shares"][order]), 0.5)) + 1]]
    return Advice(rows, [l.name for l in model.layers], base["shares"], class_shares(ctx.terms), dominant,
                  budget, na)


def format_advice(adv: Advice) -> str:
    """The advice as text: layers and their noise, ranked candidates, what each strategy addresses."""
    lines = ["output noise by layer (share of the output variance; by class: indep. additive, indep. "
             "signal-dependent, correlated additive, correlated multiplicative):"]
    for k, name in enumerate(adv.layer_names):
        mark = "  <- dominates" if k in adv.dominant else ""
        cls = " ".join(f"{v:6.1%}" for v in adv.classes[k] / max(adv.classes[k].sum(), 1e-300))
        lines.append(f"  {k:>2} {name:<24} {adv.shares[k]:6.1%}   [{cls}]{mark}")
    lines += ["", f"strategies ranked by predicted output SNR at a budget of {adv.budget:g}x MACs "
                  "(analytic, no sampling):",
              f"  {'#':>2} {'strategy':<40} {'SNR dB':>7} {'gain':>6} {'flips':>7} {'+neurons':>8} "
              f"{'cells':>6} {'execs':>5} {'MACs':>6}"]
    for i, r in enumerate(adv.rows, 1):
        over = "" if r["within"] else "  (over budget)"
        lines.append(f"  {i:>2} {r['label']:<40} {r['snr_db']:7.2f} {r['snr_gain']:5.2f}x {r['flip_rate']:7.2%} "
                     f"{r['extra_neurons']:8.0f} {r['cells_ratio']:5.2f}x {r['executions']:5.0f} "
                     f"{r['mac_ratio']:5.2f}x{over}")
    if adv.not_applicable:
        lines += ["", "not applicable:"] + [f"  {t}" for t in adv.not_applicable]
    lines += ["", "what each strategy addresses:"] + [f"  {k}: {v}" for k, v in ADDRESSES.items()]
    return "\n".join(lines)
