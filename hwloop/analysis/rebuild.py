"""A recorded run's model, per-layer profiles and data, rebuilt from its provenance (``store.Run.rebuild``).

Why a check: a prediction compared with a run is meaningful only on the same
samples through the same model, so the rebuilt data must reproduce the run's
noise-free outputs of its first analog layer (computed by the runner's own
forward pass on ideal devices) before anything is predicted from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset, load_data
from ..errors import HwloopError
from .placed import LayerSource, layer_sources


@dataclass
class RunInputs:
    """What a run was made of: its model, each layer's device description and the samples it ran on."""

    model: Any                     # hwloop.graph.Model
    sources: list[LayerSource]     # per analog layer: profile, placement, label
    data: Dataset                  # the run's samples, in the run's order
    spec: str                      # the data spec (for messages)


def rebuild_run(run: Any, model: str | Path | None = None, profile: str | Path | None = None,
                data: str | Dataset | None = None) -> RunInputs:
    """Model, profiles and data of ``run`` (a ``store.Run``) from its provenance unless given; the data
    are checked to reproduce the run's noise-free first layer (HwloopError naming the difference)."""
    from ..graph import load_model  # onnxruntime: imported only when a model must be loaded

    attrs = run.attrs
    model = load_model(model or attrs.get("model_path") or _missing("model_path", "--model"))
    sources = layer_sources(attrs, profile)   # each layer with its own device's profile and placement
    if data is None:
        name = attrs.get("data") or _missing("data", "--data")
        data = f"{name}@{int(attrs['n_samples'])}" if "n_samples" in attrs else name
    spec = data if isinstance(data, str) else getattr(data, "name", "the given data")
    ds = load_data(data) if isinstance(data, str) else data
    if not isinstance(ds, Dataset):
        x = np.asarray(ds)
        ds = Dataset(spec, x, np.zeros(len(x), np.int64), 0)
    clean0 = run.clean(0)
    if len(ds) != clean0.shape[0]:
        sample = getattr(clean0, "sample", None)
        if sample is None or len(sample) != clean0.shape[0]:
            raise HwloopError(f"data {spec!r} has {len(ds)} samples, the run {clean0.shape[0]}")
        ds = _select(ds, np.asarray(sample.values, dtype=np.int64))
    _check_reproduces(model, ds, np.asarray(clean0, dtype=np.float64), spec)
    return RunInputs(model, sources, ds, spec)


def _select(ds: Dataset, rows: np.ndarray) -> Dataset:
    named = {k: v[rows] for k, v in ds.inputs.items()} if ds.inputs else None
    return Dataset(ds.name, ds.x[rows], ds.y[rows], ds.n_classes, named)


def _check_reproduces(model: Any, ds: Dataset, clean0: np.ndarray, spec: str) -> None:
    """The data through the runner's noise-free forward pass must give the run's layer-0 reference."""
    from ..feeds import model_inputs
    from ..forward import forward
    from ..run_devices import IdealDevices

    recorded, _ = forward(model, model_inputs(model, ds), IdealDevices(model).run, 1)
    ref = np.asarray(recorded[0], np.float64)[0]
    err = np.max(np.abs(ref - clean0)) if clean0.size and ref.shape == clean0.shape else np.inf
    if err > 1e-3 * max(1.0, float(np.max(np.abs(clean0)))):
        raise HwloopError(f"data {spec!r} does not reproduce the run's noise-free outputs of layer 0 "
                          f"(max difference {err:.3g}): give the run's --data and --model")


def _missing(key: str, option: str):
    raise HwloopError(f"the run's provenance has no {key!r}: give {option}")
