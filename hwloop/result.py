"""What a run gives back: its accuracy, and its arrays when no store was written.

Why named dimensions: a run recorded into a store is read through
``hwloop.store.Run`` as xarray with dims (repeat, sample, neuron/class); a run
kept in memory reads the same way through ``RunResult.run()``, so analysis
code takes either.  The plain arrays stay on the result for callers that want
numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from . import cf
from .errors import HwloopError


@dataclass
class RunResult:
    """What a run produced; the arrays are kept in memory only when no store was written."""

    accuracy: np.ndarray                       # (repeat,)
    path: Path | None = None
    layers: list[np.ndarray] | None = None     # each (repeat, sample, neuron)
    clean_layers: list[np.ndarray] | None = None
    output: np.ndarray | None = None           # (repeat, sample, class)
    clean_output: np.ndarray | None = None     # (sample, class)
    labels: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    # the analog layers' names, in order (not ``layer_names``: readers take that as a stored Run's)
    analog_layer_names: list[str] | None = None
    #: every recorded graph output by name, each (repeat, sample, its own dims)
    graph_outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def run(self):
        """The run's arrays with named dimensions: the store (``hwloop.store.Run``) when one was written,
        else a ``MemoryRun`` with the same reading interface."""
        if self.path is not None:
            from .store import open_run

            return open_run(self.path)
        return MemoryRun(self)


def _named(values: np.ndarray, dims: tuple[str, ...], name: str, table: dict) -> xr.DataArray:
    coords = {d: np.arange(n) for d, n in zip(dims, values.shape)}
    return xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=cf.var_attrs(table, name))


class MemoryRun:
    """An in-memory run read like a store: ``layer(k)``, ``clean(k)``, ``output``, ... as xarray."""

    def __init__(self, result: RunResult):
        self._r = result
        self.attrs = result.attrs
        self.layer_names: list[str] = list(result.analog_layer_names or [str(k) for k in range(len(result.layers))])
        self.complete = True

    def _index(self, k: int | str) -> int:
        if isinstance(k, str):
            if k not in self.layer_names:
                raise HwloopError(f"no layer named {k!r} (layers: {', '.join(self.layer_names)})")
            return self.layer_names.index(k)
        if not 0 <= k < len(self._r.layers):
            raise HwloopError(f"no layer {k} (the run has {len(self._r.layers)} analog layers)")
        return k

    def layer(self, k: int | str) -> xr.DataArray:
        """Outputs of analog layer ``k`` (index or name): (repeat, sample, neuron)."""
        return _named(self._r.layers[self._index(k)], ("repeat", "sample", "neuron"), "output", cf.LAYER)

    def clean(self, k: int | str) -> xr.DataArray:
        """Noise-free reference outputs of layer ``k``: (sample, neuron)."""
        return _named(self._r.clean_layers[self._index(k)], ("sample", "neuron"), "clean", cf.LAYER)

    @property
    def output(self) -> xr.DataArray:
        return _named(self._r.output, ("repeat", "sample", "class"), "output", cf.RUN)

    @property
    def clean_output(self) -> xr.DataArray:
        return _named(self._r.clean_output, ("sample", "class"), "clean_output", cf.RUN)

    @property
    def graph_output_names(self) -> list[str]:
        """The graph outputs the run recorded."""
        return list(self._r.graph_outputs)

    def graph_output(self, name: str) -> xr.DataArray:
        """Graph output ``name`` as the run computed it: (repeat, sample, its own dims), as a store reads it."""
        if name not in self._r.graph_outputs:
            raise HwloopError(f"no graph output {name!r} recorded (recorded: {', '.join(self._r.graph_outputs) or 'none'})")
        values = self._r.graph_outputs[name]
        dims = ("repeat", "sample") + tuple(f"axis_{i + 1}" for i in range(values.ndim - 2))
        da = _named(values, dims, name, {})
        return da.assign_attrs(long_name=f"graph output {name!r} per repetition",
                               units=cf.OUT if values.dtype.kind == "f" else cf.ONE)

    @property
    def labels(self) -> xr.DataArray:
        return _named(np.asarray(self._r.labels), ("sample",), "label", cf.RUN)

    @property
    def accuracy(self) -> xr.DataArray:
        return _named(np.asarray(self._r.accuracy, dtype="f8"), ("repeat",), "accuracy", cf.RUN)

    def __repr__(self) -> str:
        return f"MemoryRun({len(self.layer_names)} layers, {self._r.output.shape[1]} samples)"


class Collected:
    """Whole-run arrays when no store is written: batches are kept as computed and joined once."""

    def __init__(self):
        self.batches: list[tuple] = []

    def put(self, layers, clean, output, clean_out, outputs: dict | None = None) -> None:
        self.batches.append((layers, clean, output, clean_out, outputs or {}))

    def result(self, labels: np.ndarray, attrs: dict, layer_names: list[str]) -> RunResult:
        """The run's result: every array joined along the sample axis, accuracy per repetition."""
        def join(parts, axis):
            return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=axis)

        n_layers = len(self.batches[0][0])
        layers = [join([b[0][k] for b in self.batches], 1) for k in range(n_layers)]
        clean = [join([b[1][k] for b in self.batches], 0) for k in range(n_layers)]
        output, clean_out = join([b[2] for b in self.batches], 1), join([b[3] for b in self.batches], 0)
        outputs = {name: join([b[4][name] for b in self.batches], 1) for name in self.batches[0][4]}
        pred = output.argmax(axis=2)
        return RunResult(accuracy=(pred == labels[None, :]).mean(axis=1), layers=layers, clean_layers=clean,
                         output=output, clean_output=clean_out, labels=labels, attrs=attrs,
                         analog_layer_names=layer_names, graph_outputs=outputs)
