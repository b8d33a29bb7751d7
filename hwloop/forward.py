"""One batch through a model's steps: analog layers on devices, digital glue in onnxruntime.

Tensors travel as (rows, ...) arrays with rows = r x B (repetition-major) and
their r: before the first analog layer r = 1, after it r = R (still 1 while
every device so far gave the same values on every repetition: an ideal or a
static-only device computes each layer once), and glue that meets tensors of
different r broadcasts the fewer repetitions.  The runner,
the Dask workers and the reference pass all walk a model through here, so a
batch gives the same numbers wherever it runs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import HwloopError
from .graph import Glue, Model, node_label
from .layer import AnalogLayer
from .lowering import run_product_layer, run_recurrent_layer


def rows(x: dict[str, np.ndarray], sl) -> dict[str, np.ndarray]:
    return {k: v[sl] for k, v in x.items()}


def stages(model: Model) -> list[list]:
    """The steps grouped per analog layer: stage k is layer k and the glue up to layer k+1
    (stage 0 also takes the glue before the first layer)."""
    stages: list[list] = [[]]
    for step in model.steps:
        if isinstance(step, AnalogLayer) and any(isinstance(s, AnalogLayer) for s in stages[-1]):
            stages.append([])
        stages[-1].append(step)
    return stages


def forward(model: Model, xb: dict[str, np.ndarray], run_layer: Callable, repeats: int):
    """One batch through every step.  Tensors are kept as (rows, ...) arrays with rows = r x B
    (repetition-major) and their r; returns each layer's (R, B, neurons) and the output (R, B, C)."""
    recorded, env = walk(model, xb, run_layer, repeats)
    return recorded, output(model, env, repeats)


def walk(model: Model, xb: dict[str, np.ndarray], run_layer: Callable, repeats: int):
    """One batch through every step: each layer's (R, B, neurons) and every tensor (name -> (rows array, r))."""
    env: dict[str, tuple[np.ndarray, int]] = {k: (v, 1) for k, v in xb.items()}
    recorded: list[np.ndarray] = []
    run_steps(model, model.steps, env, recorded, run_layer, repeats)
    return recorded, env


def run_steps(model: Model, steps: list, env: dict, recorded: list, run_layer: Callable, repeats: int) -> None:
    """Run ``steps`` on one batch's tensors ``env`` (name -> (rows array, r)); layer outputs go to ``recorded``."""
    B = len(env[model.input_name][0])
    for step in steps:
        if isinstance(step, Glue):
            run_glue(model, step, env, B)
            continue
        arr, r = env[step.input]
        r_out = repeats
        if step.recurrent is not None:
            y, rec, extra = run_recurrent_layer(step, arr, r, B, repeats, run_layer)
            env.update({t: (v, repeats) for t, v in extra.items()})
        else:
            y, rec, r_out = run_product_layer(step, arr, r, B, repeats, run_layer)
        recorded.append(rec)
        env[step.output] = (y, r_out)


def output(model: Model, env: dict, repeats: int) -> np.ndarray:
    """The model's output as (R, B, C) float32."""
    B = len(env[model.input_name][0])
    out, r = env[model.output_name]
    out = np.asarray(out, dtype=np.float32).reshape(r, B, -1)
    if r != repeats:
        out = np.broadcast_to(out, (repeats,) + out.shape[1:])
    return out


def graph_outputs(model: Model, env: dict, repeats: int) -> dict[str, np.ndarray]:
    """Every recorded graph output (``Model.recorded_outputs``) by name, as (R, B, its own dims):
    floats as float32, integers as int64, booleans as uint8 (what the run store holds).  An output
    without a batch dimension (not one value per sample) is left out."""
    B = len(env[model.input_name][0])
    outs = {}
    for name, tensor in model.recorded_outputs:
        arr, r = env[tensor]
        arr = np.asarray(arr)
        if arr.ndim == 0 or arr.shape[0] != r * B:
            continue
        kind = np.float32 if arr.dtype.kind == "f" else np.uint8 if arr.dtype.kind == "b" else np.int64
        arr = arr.astype(kind, copy=False).reshape((r, B) + arr.shape[1:])
        outs[name] = arr if r == repeats else np.broadcast_to(arr, (repeats,) + arr.shape[1:])
    return outs


def run_glue(model: Model, glue: Glue, env: dict, B: int) -> None:
    r = max(env[t][1] for t in glue.inputs) if glue.inputs else 1
    feeds = {}
    for t in glue.inputs:
        arr, rt = env[t]
        if rt != r and t not in glue.unbatched and arr.ndim and arr.shape[0] == rt * B:   # fewer repetitions
            arr = np.broadcast_to(arr.reshape((rt, B) + arr.shape[1:]), (r, B) + arr.shape[1:])
            arr = arr.reshape((r * B,) + arr.shape[2:])
        feeds[t] = arr
    try:
        outs = glue.run(feeds) if model.batch_dim is None else _fixed_batch(glue, feeds, model.batch_dim, r * B)
    except Exception as e:
        node = glue.nodes[0]
        hint = (f" (the model was exported with a fixed batch size of {model.batch_dim}: export it with a "
                "dynamic batch dimension)") if model.batch_dim is not None else ""
        raise HwloopError(f"{model.path}: digital segment starting at node {node_label(node)!r} ({node.op_type}) "
                          f"failed: {str(e).strip().splitlines()[0]}{hint}") from None
    for t, v in outs.items():
        env[t] = (v, r)


def _fixed_batch(glue: Glue, feeds: dict, size: int, rows: int) -> dict:
    """Run a model exported with a fixed batch ``size`` on ``rows`` rows: ``size`` rows per call (the last
    call padded with copies of the last row, dropped afterwards)."""
    if rows == size:
        return glue.run(feeds)
    parts = []
    for lo in range(0, rows, size):
        chunk = {}
        for t, v in feeds.items():
            if v.ndim and v.shape[0] == rows:
                v = v[lo:lo + size]
                if len(v) < size:
                    v = np.concatenate([v, np.repeat(v[-1:], size - len(v), axis=0)])
            chunk[t] = v
        parts.append(glue.run(chunk))
    return {t: (np.concatenate([p[t] for p in parts])[:rows] if v.ndim and v.shape[0] == size else v)
            for t, v in parts[0].items()}
