"""The data set as a model's graph inputs: named, shaped and typed as the model declares them.

Why apart from the runner: every command that feeds a model (run, check,
finetune, mitigate) turns a data set into its inputs the same way, and refuses
non-finite data or a shape that does not fit with the same line.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import Dataset
from .errors import HwloopError
from .graph import Model


def model_input(model: Model, ds: Dataset) -> np.ndarray:
    """The data as the input of a model with one graph input (``model_inputs`` for several)."""
    xs = model_inputs(model, ds)
    if len(xs) != 1:
        raise HwloopError(f"{model.path.name} has {len(xs)} graph inputs ({', '.join(xs)}); "
                          "this step takes models with one")
    return next(iter(xs.values()))


def model_inputs(model: Model, ds: Dataset) -> dict[str, np.ndarray]:
    """The data as the model's graph inputs (name -> array, samples first); reshapes flat data when the
    element count matches.  Several inputs take the data set's named arrays (``npz:PATH``, one per input)."""
    if len(model.input_names) == 1 and not ds.inputs:
        return {model.input_name: _shaped(model, ds.name, model.input_name, ds.x, model.input_shape,
                                          model.input_dtype)}
    named = ds.inputs or {}
    missing = [n for n in model.input_names if n not in named]
    if missing:
        raise HwloopError(f"data {ds.name}: no array for graph input(s) {', '.join(missing)} of {model.path.name}"
                          f" (has: {', '.join(named) or 'one unnamed array'}); give npz:PATH with y and one "
                          "array per input, named like it")
    return {n: _shaped(model, ds.name, n, named[n], shape, dt)
            for n, shape, dt in zip(model.input_names, model.input_shapes, model.input_dtypes)}


def _shaped(model: Model, data: str, name: str, x: np.ndarray, want: tuple, dtype: np.dtype) -> np.ndarray:
    if x.dtype.kind == "f" and not _all_finite(x):
        raise HwloopError(f"data {data}: input contains NaN or infinity")
    have = x.shape[1:]
    if len(have) == len(want) and all(w is None or w == h for w, h in zip(want, have)):
        return np.ascontiguousarray(x, dtype=dtype)
    if None not in want and int(np.prod(want)) == int(np.prod(have)):
        return np.ascontiguousarray(x.reshape((len(x),) + tuple(want)), dtype=dtype)
    fmt = lambda s: "x".join("?" if d is None else str(d) for d in s)  # noqa: E731
    n_want = "?" if None in want else str(int(np.prod(want)))
    raise HwloopError(f"data {data} has {int(np.prod(have))} values per sample ({fmt(have)}) but model "
                      f"{model.path.name} input {name!r} takes {n_want} ({fmt(want)})")


def _all_finite(x: np.ndarray) -> bool:
    """NaN/inf check in one multithreaded pass (a sum is non-finite when any element is); exact check only then."""
    big = x.size >= 1 << 20           # below, waking torch's threads costs more than one numpy pass
    total = torch.from_numpy(x).sum() if big and x.dtype == np.float32 and x.flags.c_contiguous else x.sum()
    return bool(np.isfinite(float(total))) or bool(np.isfinite(x).all())
