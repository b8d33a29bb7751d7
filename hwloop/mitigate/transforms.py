"""Strategies -> a plan -> new analog layers that keep the noise-free function exactly.

- Ghost neurons (layer n, g of them): g rows of zero weights and zero bias,
  so each outputs f(0) noise-free and carries only the layer's noise; the
  next layer gets g columns of -S_i/g (S_i = sum_j W_ij) and its bias + S_i f(0).
  Noise-free, the columns add -S_i f(0) and the bias adds it back.
- Duplication by k: layer n's rows tiled k times, the next layer's columns
  tiled k times and divided by k (each copy weighted 1/k).
- Slope scaling by a (linear and relu only: f(a z) = a f(z) for a > 0):
  layer n's weights and bias times a, the next layer's columns divided by a.
  For sigmoid and tanh no such rescaling keeps the function; asking for it
  is an error naming the layer.
- Multi-execution changes no weights: it is the plan's ``execs``, honoured by
  ``MultiExec`` devices at run time (see ``multiexec``).

Order: slope, then ghosts, then copies (ghosts are duplicated with their layer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import onnx

from ..errors import HwloopError
from ..layer import AnalogLayer, activate
from ..walking.planner import allocate
from .onnxedit import chain_next, rewrite
from .plan import Plan, Strategy

#: activations with f(a z) = a f(z) for a > 0: the only ones slope scaling keeps exact
HOMOGENEOUS = ("linear", "relu")


def _targets(model, st: Strategy, readout_ok: bool) -> list[int]:
    """Layers a strategy applies to: those asked (checked), or every one it can (non-readout, chained)."""
    n_layers = len(model.layers)
    for n in st.layers or ():
        if not 0 <= n < n_layers:
            raise HwloopError(f"strategy {st.label}: no analog layer {n} (the model has 0..{n_layers - 1})")
    if st.layers is not None:
        return list(st.layers)
    return list(range(n_layers if readout_ok else n_layers - 1))


def _chained(model, st: Strategy, what: str, plan: Plan) -> list[int]:
    """The target layers whose output reaches the next layer as a plain chain.  A layer asked for by
    index that cannot take the strategy is an error; by default such layers are skipped with a note
    (and an error only when no layer is left)."""
    ok, first = [], None
    for n in _targets(model, st, readout_ok=False):
        try:
            chain_next(model, n, what)
            ok.append(n)
        except HwloopError as e:
            if st.layers is not None:
                raise
            first = first or e
            plan.notes.append(f"{st.name}: skipped: {e}")
    if not ok and first is not None:
        raise first
    return ok


def _ghosts(model, st: Strategy, plan: Plan, noises) -> None:
    g = int(st.arg or 1)
    for n in _chained(model, st, "ghost neurons", plan):
        cols = noises[n].cols if noises is not None else None
        if cols is not None and cols < model.layers[n].n_out:
            raise HwloopError(f"layer {n} {model.layers[n].name!r}: the profile splits it into column tiles of "
                              f"{cols}, each with its own correlated draw; ghost neurons need one draw per layer")
        plan.ghosts[n] += g
    plan.notes.append(f"ghost: {g} ghost neuron(s) on layer(s) {_list(plan.ghosts > 0)}")


def _duplicate(model, st: Strategy, plan: Plan) -> None:
    k = int(st.arg or 2)
    for n in _chained(model, st, "duplication", plan):
        plan.copies[n] *= k
    plan.notes.append(f"duplicate: {k} copies of every neuron on layer(s) {_list(plan.copies > 1)}")


def _slope(model, st: Strategy, plan: Plan, gains: np.ndarray) -> None:
    target = st.arg or 0.9
    asked = st.layers is not None
    todo = [n for n in _targets(model, st, readout_ok=False) if asked or gains[n] >= 1.0]
    for n in todo:
        layer = model.layers[n]
        if layer.activation not in HOMOGENEOUS:
            raise HwloopError(f"layer {n} {layer.name!r} ({layer.activation}, gain {gains[n]:.3g}): slope scaling "
                              f"keeps the function only for {' and '.join(HOMOGENEOUS)} activations; a "
                              f"{layer.activation} of a rescaled pre-activation is a different function")
        chain_next(model, n, "slope scaling")
        if gains[n] < 1.0:
            plan.notes.append(f"slope: layer {n} gain {gains[n]:.3g} is already below 1; left as it is")
            continue
        plan.scale[n] = np.sqrt(target / gains[n])
        plan.notes.append(f"slope: layer {n} gain {gains[n]:.3g} -> {target:g} (pre-activation x "
                          f"{plan.scale[n]:.4g}, next weights / {plan.scale[n]:.4g})")
    if not todo:
        plan.notes.append("slope: no layer has a gain >= 1; nothing to rescale")


def allocate_execs(plan: Plan, shares: np.ndarray, budget: int, scheme: str,
                   layers: Sequence[int] | None = None) -> np.ndarray:
    """Executions per layer from a total ``budget`` with a planner scheme (``walking.planner.allocate``).

    A layer's 'midpoint' is 1/sqrt(its share of the output noise variance): the
    schemes were made for midpoints, and inv_mu2 then gives layers executions
    in proportion to the noise they put on the output.
    """
    sel = list(range(len(plan.execs))) if layers is None else list(layers)
    execs = np.ones(len(plan.execs), np.int64)
    execs[sel] = allocate(midpoints(np.asarray(shares)[sel]), budget - (len(plan.execs) - len(sel)), scheme)
    return execs


def midpoints(shares: np.ndarray) -> np.ndarray:
    """A layer's stand-in for a Walking Noise midpoint: 1/sqrt(its share of the output noise); inf for none."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(np.maximum(np.asarray(shares, dtype=np.float64), 0.0))


def make_plan(model, strategies: Sequence[Strategy], *, noises=None, op=None, terms=None) -> Plan:
    """The plan for ``strategies`` (combined); slope needs ``op`` (operating points), multi-exec ``terms``."""
    from .decompose import layer_gains, layer_shares

    plan = Plan.identity([(l.n_in, l.n_out) for l in model.layers])
    order = {"slope": 0, "ghost": 1, "duplicate": 2, "multi-exec": 3}
    for st in sorted(strategies, key=lambda s: order[s.name]):
        if st.name == "slope":
            if op is None:
                raise HwloopError("slope scaling needs data (the gain is measured at the operating point)")
            _slope(model, st, plan, layer_gains(model, op))
        elif st.name == "ghost":
            _ghosts(model, st, plan, noises)
        elif st.name == "duplicate":
            _duplicate(model, st, plan)
        else:
            if terms is None:
                raise HwloopError("multi-exec needs a profile and data (its budget follows each layer's noise)")
            budget = int(st.arg or 2 * len(model.layers))
            if budget < len(model.layers):
                raise HwloopError(f"strategy {st.label}: a budget of {budget} executions cannot run each of the "
                                  f"{len(model.layers)} layers once")
            plan.execs = allocate_execs(plan, layer_shares(terms, plan), budget, st.scheme,
                                        _targets(model, st, readout_ok=True))
            plan.notes.append(f"multi-exec: executions per layer {plan.execs.tolist()} ({st.scheme}, budget {budget})")
    plan.label = "+".join(s.label for s in strategies) or "none"
    return plan


def _list(mask: np.ndarray) -> str:
    return ", ".join(str(i) for i in np.flatnonzero(mask)) or "none"


def build_layers(model, plan: Plan) -> list[AnalogLayer]:
    """New analog layers for ``plan`` (unchanged layers are the original objects)."""
    ws = [l.weight.astype(np.float64) for l in model.layers]
    bs = [l.bias.astype(np.float64) for l in model.layers]
    changed = set()
    for n in np.flatnonzero(plan.scale != 1.0):
        a = float(plan.scale[n])
        ws[n], bs[n], ws[n + 1] = ws[n] * a, bs[n] * a, ws[n + 1] / a
        changed |= {n, n + 1}
    for n in np.flatnonzero(plan.ghosts):
        g = int(plan.ghosts[n])
        level = float(activate(model.layers[n].activation, np.zeros(1)).item())
        s = ws[n + 1].sum(axis=1)
        ws[n] = np.vstack([ws[n], np.zeros((g, ws[n].shape[1]))])
        bs[n] = np.concatenate([bs[n], np.zeros(g)])
        ws[n + 1] = np.hstack([ws[n + 1], np.repeat(-s[:, None] / g, g, axis=1)])
        bs[n + 1] = bs[n + 1] + s * level
        changed |= {n, n + 1}
    for n in np.flatnonzero(plan.copies > 1):
        k = int(plan.copies[n])
        ws[n], bs[n] = np.tile(ws[n], (k, 1)), np.tile(bs[n], k)
        ws[n + 1] = np.tile(ws[n + 1], (1, k)) / k
        changed |= {n, n + 1}
    return [replace(l, weight=ws[n].astype(np.float32), bias=bs[n].astype(np.float32), meta=dict(l.meta))
            if n in changed else l for n, l in enumerate(model.layers)]


@dataclass
class Mitigated:
    """A plan applied: the new layers, an in-memory ``Model`` with them, and the ONNX file's content."""

    plan: Plan
    layers: list[AnalogLayer]
    model: object                 # hwloop.graph.Model with the new layers (for predict and the runner)
    proto: onnx.ModelProto

    @property
    def average(self) -> dict[int, int]:
        return self.plan.average


def apply_plan(model, plan: Plan) -> Mitigated:
    """Build the layers and the ONNX model of ``plan``; multi-exec travels as model metadata."""
    from .multiexec import METADATA_KEY, encode

    layers = build_layers(model, plan)
    steps = [layers[s.index] if isinstance(s, AnalogLayer) else s for s in model.steps]
    meta = {METADATA_KEY: encode(plan.average)} if plan.average else {}
    meta["hwloop.mitigation"] = plan.label
    proto = rewrite(model, layers, meta)
    return Mitigated(plan, layers, replace(model, layers=layers, steps=steps), proto)
