"""The Python API of ``hwloop mitigate``: strategies in, a mitigated ONNX file (and its plan) out."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..graph import Model, load_model
from .advise import context, layer_noises, model_inputs
from .onnxedit import save
from .plan import Plan, Strategy, parse_strategy
from .transforms import apply_plan, make_plan


def mitigate(model: Model | str | Path, profile, data, strategies: Sequence[Strategy | str],
             out: str | Path) -> tuple[Plan, float]:
    """Write ``model`` with ``strategies`` applied to ``out``; returns the plan and the largest relative
    difference of the noise-free outputs (at most ``onnxedit.TOLERANCE``, else nothing is written).

    ``profile`` sets the noise (column tiles for ghosts, shares for multi-exec); ``data`` the samples
    the function is checked on, and the operating point (slope scaling, multi-exec allocation).
    Ghosts and duplication alone need no prediction, so they apply to the dense part of any model.
    """
    model = model if isinstance(model, Model) else load_model(model)
    specs = [parse_strategy(s) if isinstance(s, str) else s for s in strategies]
    noises = layer_noises(model, profile)
    structural = [s for s in specs if s.name in ("ghost", "duplicate")]
    plan = make_plan(model, structural, noises=noises)    # errors that name the strategy come first
    x = model_inputs(model, data)
    if len(structural) < len(specs):                      # slope and multi-exec: operating point, noise shares
        ctx = context(model, profile, x)
        plan = make_plan(model, specs, noises=ctx.noises, op=ctx.op, terms=ctx.terms)
    return plan, save(model, apply_plan(model, plan).proto, x, out)
