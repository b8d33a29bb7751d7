"""What a mitigation does to each analog layer, and what it costs on the chip.

A ``Plan`` holds, per analog layer: ghost neurons added (against correlated
noise), copies of every neuron (duplication, against uncorrelated noise),
executions averaged (multi-execution, against all fresh noise of the layer)
and a pre-activation scale (slope scaling).  Strategies given by name
(``ghost``, ``duplicate:3``, ``multi-exec:8``, ``slope``) become a plan; the
plan is what the transforms build, the advisor predicts and the proof runs.

Chip cost is counted three ways: extra neurons (array columns), array cells
(weights) and multiply-accumulates per inference (cells x executions).  The
last is the one currency a budget is given in: ``cost`` is the MAC ratio to
the original model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from ..errors import HwloopError
from ..walking.planner import SCHEMES

STRATEGIES = ("ghost", "duplicate", "multi-exec", "slope")
#: which noise class each strategy addresses, and why (printed by the advisor)
ADDRESSES = {
    "ghost": "correlated additive (D_AC): a neuron with no input carries only the layer's shared draw; the next "
             "layer subtracts it with weights -sum_j W_ij, so the common mode cancels exactly (post-activation). "
             "Correlated multiplicative (D_MC) scales each neuron's own value, so only the part at the ghost's "
             "level cancels; the ghost adds its own independent noise",
    "duplicate": "uncorrelated (D_A, D_M, ADC step): k copies of a neuron draw independent noise and the next "
                 "layer averages them (variance / k); copies share the correlated draw, which stays",
    "multi-exec": "every fresh noise of the layer, correlated included: k separate executions draw "
                  "independently and are averaged on the host (variance / k), at k times the time",
    "slope": "additive noise relative to the signal, for linear/relu layers whose gain is >= 1: scaling a "
             "layer's pre-activation by a and the next weights by 1/a keeps the function; it moves gain from "
             "layer to layer (the product is unchanged) and scales that layer's additive SNR by a^2",
}
_SPEC = re.compile(r"^(?P<name>[a-z-]+)(?::(?P<arg>[0-9.]+))?(?::(?P<scheme>[a-z_]+))?(?:@(?P<layers>[0-9,]+))?$")


@dataclass(frozen=True)
class Strategy:
    """One strategy as asked: ``NAME[:ARG[:SCHEME]][@LAYER,LAYER]``.

    ARG: ghosts per layer (ghost, default 1), copies (duplicate, default 2),
    total executions over all layers (multi-exec, default 2 per layer),
    gain after scaling (slope, default 0.9).  SCHEME: a planner allocation
    scheme for multi-exec (default inv_mu2).  LAYERS: where (default: every
    layer it applies to).
    """

    name: str
    arg: float | None = None
    scheme: str = "inv_mu2"
    layers: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        arg = "" if self.arg is None else f":{self.arg:g}"
        sch = f":{self.scheme}" if self.name == "multi-exec" and self.scheme != "inv_mu2" else ""
        at = "" if self.layers is None else "@" + ",".join(map(str, self.layers))
        return f"{self.name}{arg}{sch}{at}"


def parse_strategy(text: str) -> Strategy:
    """A ``Strategy`` from its spec; one clear error for anything else."""
    m = _SPEC.match(text.strip())
    if not m or m["name"] not in STRATEGIES:
        raise HwloopError(f"strategy {text!r}: not of the form NAME[:ARG[:SCHEME]][@LAYERS] "
                          f"(NAME: {', '.join(STRATEGIES)})")
    arg = float(m["arg"]) if m["arg"] else None
    if arg is not None and m["name"] != "slope" and (arg != int(arg) or arg < 1):
        raise HwloopError(f"strategy {text!r}: {m['name']} takes a whole number >= 1, got {m['arg']}")
    if m["name"] == "slope" and arg is not None and not 0 < arg < 1:
        raise HwloopError(f"strategy {text!r}: the target gain must lie in (0, 1), got {m['arg']}")
    scheme = m["scheme"] or "inv_mu2"
    if scheme not in SCHEMES:
        raise HwloopError(f"strategy {text!r}: unknown allocation scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    layers = tuple(int(v) for v in m["layers"].split(",") if v) if m["layers"] else None
    return Strategy(m["name"], arg, scheme, layers)


@dataclass
class Plan:
    """Per analog layer: ghosts, copies, executions and pre-activation scale; ``notes`` say what was done."""

    widths: tuple[tuple[int, int], ...]            # (n_in, n_out) of the original layers
    ghosts: np.ndarray = None                       # (L,) ghost neurons added to each layer
    copies: np.ndarray = None                       # (L,) copies of every neuron (1: none)
    execs: np.ndarray = None                        # (L,) executions averaged (1: once)
    scale: np.ndarray = None                        # (L,) pre-activation scale a (1: none)
    label: str = "none"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.widths)
        for name, dtype, one in (("ghosts", np.int64, 0), ("copies", np.int64, 1), ("execs", np.int64, 1),
                                 ("scale", np.float64, 1.0)):
            if getattr(self, name) is None:
                setattr(self, name, np.full(n, one, dtype))

    @classmethod
    def identity(cls, widths: Sequence[tuple[int, int]]) -> "Plan":
        return cls(tuple((int(a), int(b)) for a, b in widths))

    def copy(self, **kw) -> "Plan":
        base = {k: getattr(self, k).copy() for k in ("ghosts", "copies", "execs", "scale")}
        return replace(self, **{**base, "notes": list(self.notes), **kw})

    def new_widths(self) -> list[tuple[int, int]]:
        """(n_in, n_out) of every layer after ghosts and copies."""
        outs = [(o + int(g)) * int(k) for (_, o), g, k in zip(self.widths, self.ghosts, self.copies)]
        return [(self.widths[0][0] if n == 0 else outs[n - 1], outs[n]) for n in range(len(outs))]

    def cost(self) -> dict[str, float]:
        """Extra neurons, array cells, executions per inference and the MAC ratio to the original."""
        old = self.widths
        new = self.new_widths()
        cells0 = sum(i * o for i, o in old)
        cells = sum(i * o for i, o in new)
        macs = sum(i * o * int(e) for (i, o), e in zip(new, self.execs))
        return {"extra_neurons": float(sum(o for _, o in new) - sum(o for _, o in old)),
                "cells": float(cells), "cells_ratio": cells / cells0,
                "executions": float(self.execs.sum()), "mac_ratio": macs / cells0}

    @property
    def average(self) -> dict[int, int]:
        """Layers executed more than once: layer -> k (``predict(average=...)``, ``MultiExec``)."""
        return {n: int(k) for n, k in enumerate(self.execs) if k > 1}
