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

    ``profile`` and ``data`` set the operating point (slope scaling) and the noise shares (multi-exec).
    """
    model = model if isinstance(model, Model) else load_model(model)
    specs = [parse_strategy(s) if isinstance(s, str) else s for s in strategies]
    structural = [s for s in specs if s.name in ("ghost", "duplicate")]
    make_plan(model, structural, noises=layer_noises(model, profile))   # errors that name the strategy, first
    x = model_inputs(model, data)
    ctx = context(model, profile, x)
    plan = make_plan(model, specs, noises=ctx.noises, op=ctx.op, terms=ctx.terms)
    return plan, save(model, apply_plan(model, plan).proto, x, out)
