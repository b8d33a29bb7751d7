"""The run store: every analog layer's outputs, recorded crash-safe in Zarr.

Layout (a Zarr v3 group; ``xarray.open_zarr`` opens it with named dims)::

    attrs                      provenance (model hash, devices, seed, versions, ...): flat CF-style
                               attributes, nested values as KEY_json strings (hwloop.cf)
    repeat, sample, class      coordinates (indices), every array with units and long_name
    output        (repeat, sample, class)   final outputs (the class scores)
    clean_output  (sample, class)           noise-free reference pass
    label         (sample,)                 int64
    prediction    (repeat, sample)          argmax of output
    correct       (repeat, sample)          prediction == label
    accuracy      (repeat,)                 written when the run completes
    bookkeeping/batch_done (batch,)         1 once every array of that batch is written
    layers/<k>/output (repeat, sample, neuron), layers/<k>/clean (sample, neuron)  (+ coordinates)
    outputs/<k>/output (repeat, sample, axis_1, ...)  graph output k (attrs: its name), one per graph output

Why it survives SIGKILL: all metadata is written into a temporary folder that
is renamed into place (``--overwrite`` renames the old store aside first and
deletes it only after, see ``hwloop.files.atomic_dir``), so a store either
exists with every array or not at all; afterwards every array is chunked by
batch along ``sample``, zarr's LocalStore writes each chunk file atomically
(tmp + rename), every chunk of a batch is written (even one equal to the fill
value) and a batch's ``batch_done`` marker is written last.  ``accuracy`` is
written before the last marker, so a store whose markers are all set is
complete.  A batch without its marker is unfinished and is simply written again
on ``--resume``.  Readers check the store against its manifest (every array's
metadata, every chunk of every marked batch) and refuse a damaged one.  The
writer holds ``hwloop.files.store_lock`` (one writer per path).  Creating,
opening and marking are ``hwloop.resumable.ZarrStore``'s, shared with the
calibration and sweep stores.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import xarray as xr
import zarr

from . import cf
from .errors import HwloopError
from .resumable import ZarrStore, creating, json_attrs

FORMAT = "hwloop-run/1"

#: manifest: per-batch arrays -> the chunk key of batch {b} (zarr v3 default encoding)
_BATCH_CHUNKS = {"output": "0/{b}/0", "clean_output": "{b}/0", "label": "{b}", "prediction": "0/{b}",
                 "correct": "0/{b}"}
_LAYER_CHUNKS = {"output": "0/{b}/0", "clean": "{b}/0"}

#: provenance keys a resumed run must share with the store it continues
RESUME_KEYS = ("model_sha256", "data_sha256", "n_samples", "seed", "repeats", "batch_size", "profile_sha256")
#: internal per-batch markers, kept in their own group so xarray's root dataset shows only data
DONE = "bookkeeping/batch_done"


@dataclass(frozen=True)
class LayerInfo:
    """What the store records about one analog layer (its group's attrs)."""

    index: int
    name: str
    op: str
    activation: str
    neurons: int


@dataclass(frozen=True)
class OutputInfo:
    """What the store records about one graph output (its group's attrs): name, per-sample shape, dtype."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str                  # f4, i8 or u1

    @classmethod
    def of(cls, index: int, name: str, probe: np.ndarray) -> "OutputInfo":
        """The info of graph output ``name`` from a probe of it, (repeat, sample, ...)."""
        return cls(index, name, tuple(int(d) for d in probe.shape[2:]), probe.dtype.str[1:])


class _RunStore(ZarrStore):
    """A run store opened for reading or writing (checks and markers from ``ZarrStore``)."""

    KIND = "run store"
    NOT_A = "not an hwloop run store"
    FORMAT = FORMAT
    LEGACY_ATTRS = "hwloop"
    DONE = DONE
    LEGACY_DONE = "batch_done"

    def check(self) -> list[int]:
        """Check the store against its manifest; returns the marked batches with a chunk missing.

        Raises HwloopError when an array is missing altogether (its own metadata gone)."""
        manifest = _manifest(len(self.attrs["layers"]), self.attrs.get("graph_outputs", []))
        self.require([*manifest, "accuracy", self.done_name], "run it again with --overwrite")
        return self.lost(lambda b: [f"{name}/c/{key.format(b=b)}" for name, key in manifest.items()])


class RunWriter(_RunStore):
    """Writes one run batch by batch; create with :meth:`create` or :meth:`resume`."""

    def __init__(self, path: Path):
        super().__init__(path, mode="r+")
        self.batch_size = int(self.attrs["batch_size"])
        self.n_layers = len(self.attrs["layers"])
        self.outputs = {o["name"]: o["index"] for o in self.attrs.get("graph_outputs", [])}
        # open every array once (each lookup through the group reads metadata from disk); every chunk
        # is written, even one equal to the fill value, so readers can check a batch's chunks exist
        names = list(_manifest(self.n_layers, self.attrs.get("graph_outputs", []))) + ["accuracy"]
        self._a = {name: self.root[name].with_config({"write_empty_chunks": True}) for name in names}
        self._todo = set(np.flatnonzero(~self.marked()).tolist())

    @classmethod
    def create(cls, path: str | Path, *, layers: list[LayerInfo], n_samples: int, n_classes: int,
               batch_size: int, repeats: int, attrs: dict, overwrite: bool = False) -> "RunWriter":
        """Create an empty store at ``path`` atomically (built aside, then renamed into place).

        ``attrs["graph_outputs"]``, when given: the graph outputs to record (``OutputInfo`` fields as a dict)."""
        n_batches = -(-n_samples // batch_size)
        graph_outputs = [OutputInfo(**dict(o, shape=tuple(o["shape"]))) for o in attrs.get("graph_outputs", [])]
        attrs = json_attrs(dict(attrs, format=FORMAT, n_samples=n_samples, batch_size=batch_size, repeats=repeats,
                                n_batches=n_batches, n_classes=n_classes, layers=[vars(info) for info in layers]),
                           path)
        with creating(path, overwrite=overwrite,
                      exists="output exists (use --resume to continue it or --overwrite to replace it)") as tmp:
            root = zarr.open_group(str(tmp), mode="w")
            root.attrs.put(cf.store_attrs(attrs))
            R, N, B = repeats, n_samples, batch_size

            def arr(group, name, shape, chunks, dtype, dims, fill, table=cf.RUN):
                # uncompressed: noisy float32 barely compresses, and zstd would triple the write time
                group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                                   dimension_names=dims, compressors=None, attributes=cf.var_attrs(table, name))

            arr(root, "output", (R, N, n_classes), (R, B, n_classes), "f4", ("repeat", "sample", "class"), np.nan)
            arr(root, "clean_output", (N, n_classes), (B, n_classes), "f4", ("sample", "class"), np.nan)
            arr(root, "label", (N,), (B,), "i8", ("sample",), -1)
            arr(root, "prediction", (R, N), (R, B), "i8", ("repeat", "sample"), -1)
            arr(root, "correct", (R, N), (R, B), "u1", ("repeat", "sample"), 0)
            arr(root, "accuracy", (R,), (R,), "f8", ("repeat",), np.nan)
            arr(root, DONE, (n_batches,), (1,), "u1", ("batch",), 0)
            _coords(root, repeat=R, sample=N, **{"class": n_classes})
            for info in layers:
                g = root.create_group(f"layers/{info.index}")
                g.attrs.update(vars(info))
                n = info.neurons
                arr(g, "output", (R, N, n), (R, B, n), "f4", ("repeat", "sample", "neuron"), np.nan, cf.LAYER)
                arr(g, "clean", (N, n), (B, n), "f4", ("sample", "neuron"), np.nan, cf.LAYER)
                _coords(g, repeat=R, sample=N, neuron=n)
            for o in graph_outputs:
                _output_group(root, o, R, N, B)
            _consolidate(tmp)
        return cls(path)

    @classmethod
    def resume(cls, path: str | Path, expect: dict) -> "RunWriter":
        """Reopen ``path`` to continue it; every key of RESUME_KEYS must match ``expect``.

        A marked batch with a chunk missing (a damaged store) loses its marker and is written again.
        """
        store = _RunStore(path, mode="r")
        store.check_resume(expect, RESUME_KEYS)
        damaged = store.check()
        writer = cls(path)
        for b in damaged:
            writer.mark_done(b, False)
            writer._todo.add(b)
        return writer

    def done(self) -> np.ndarray:
        """Per batch: True where its marker is set."""
        return self.marked()

    def write_batch(self, index: int, *, layers: list[np.ndarray], clean: list[np.ndarray],
                    output: np.ndarray, clean_output: np.ndarray, labels: np.ndarray,
                    graph_outputs: dict[str, np.ndarray] | None = None) -> None:
        """Write batch ``index`` (arrays hold that batch's samples; ``graph_outputs``: every graph output
        the store records, by name, (repeat, sample, ...)), then its marker."""
        sl = slice(index * self.batch_size, index * self.batch_size + len(labels))
        pred = output.argmax(axis=2)
        writes = [("output", (slice(None), sl), output), ("clean_output", sl, clean_output), ("label", sl, labels),
                  ("prediction", (slice(None), sl), pred),
                  ("correct", (slice(None), sl), (pred == labels[None, :]).astype(np.uint8))]
        for k in range(self.n_layers):
            writes += [(f"layers/{k}/output", (slice(None), sl), layers[k]), (f"layers/{k}/clean", sl, clean[k])]
        for name, k in self.outputs.items():
            if graph_outputs is None or name not in graph_outputs:
                raise HwloopError(f"{self.path}: batch {index} lacks graph output {name!r}, which the store records")
            writes.append((f"outputs/{k}/output", (slice(None), sl), graph_outputs[name]))
        for name, sel, value in writes:
            self._a[name][sel] = value
        if self._todo == {index}:   # the last batch: accuracy before its marker, so "all marked" means complete
            self._write_accuracy()
        self.mark_done(index)   # last: the batch counts only once all its chunks are on disk
        self._todo.discard(index)

    def update_attrs(self, **changes) -> None:
        """Replace provenance keys (e.g. the devices' counters at the end of a session).

        Each metadata file is replaced atomically; the consolidated copy is rewritten after.
        """
        self.set_attrs(**changes)
        _consolidate(self.path)

    def finish(self) -> np.ndarray:
        """Once every batch is done: the per-repeat accuracy (written, if a kill of an older version missed it)."""
        acc = self._a["accuracy"][:]
        return self._write_accuracy() if np.isnan(acc).any() else acc

    def _write_accuracy(self) -> np.ndarray:
        acc = self._a["correct"][:].mean(axis=1)
        self._a["accuracy"][:] = acc
        return acc


def _coords(group, **sizes: int) -> None:
    """Index coordinates (0..n-1, with units and long_name) for the named dimensions of ``group``."""
    for dim, n in sizes.items():
        group.create_array(dim, data=np.arange(n, dtype="i8"), chunks=(max(n, 1),), dimension_names=(dim,),
                           attributes=cf.var_attrs(cf.COORDS, dim))


def _output_group(root, o: OutputInfo, R: int, N: int, B: int) -> None:
    """The group ``outputs/<k>`` of graph output ``o``: its array (repeat, sample, axis_1, ...) chunked by batch."""
    g = root.create_group(f"outputs/{o.index}")
    g.attrs.update(vars(o))
    dims = ("repeat", "sample") + tuple(f"axis_{i + 1}" for i in range(len(o.shape)))
    number = o.dtype.startswith("f")
    g.create_array("output", shape=(R, N) + o.shape, chunks=(R, B) + o.shape, dtype=o.dtype,
                   fill_value=np.nan if number else 0, dimension_names=dims, compressors=None,
                   attributes={"long_name": f"graph output {o.name!r} per repetition",
                               "units": cf.OUT if number else cf.ONE})
    _coords(g, repeat=R, sample=N, **{d: n for d, n in zip(dims[2:], o.shape)})


def _manifest(n_layers: int, outputs: list[dict] = ()) -> dict[str, str]:
    """Every per-batch array of a store with ``n_layers`` analog layers and graph ``outputs`` (their
    infos) -> its chunk key pattern."""
    out = dict(_BATCH_CHUNKS)
    out.update({f"layers/{k}/{a}": key for k in range(n_layers) for a, key in _LAYER_CHUNKS.items()})
    out.update({f"outputs/{o['index']}/output": "0/{b}" + "/0" * len(o["shape"]) for o in outputs})
    return out


def _consolidate(path: Path) -> None:
    """Rewrite the store's consolidated metadata (one read for xarray and open_run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not in the v3 spec"
        zarr.consolidate_metadata(str(path))


def read_attrs(path: str | Path) -> dict:
    """The provenance of the store at ``path``; HwloopError when it is not a run store."""
    return _RunStore(path, mode="r").attrs


class Run(_RunStore):
    """Read side of a run store; exposes only the samples of completed batches."""

    def __init__(self, path: str | Path):
        super().__init__(path, mode="r")
        damaged = self.check()
        if damaged:
            raise HwloopError(f"{self.path}: damaged run store: batch {damaged[0]} is marked done but "
                              f"some of its data is missing ({len(damaged)} batch(es)); --resume writes them again")
        try:
            self._root = xr.open_zarr(str(self.path))
            done = self.marked()
            self.complete: bool = bool(done.all())
            if self.complete and np.isnan(self._root["accuracy"].values).any():
                raise HwloopError(f"{self.path}: run not finalised (accuracy missing); --resume completes it")
        except HwloopError:
            raise
        except Exception as e:
            raise HwloopError(f"{self.path}: damaged run store: {e}") from None
        n, bs = int(self.attrs["n_samples"]), int(self.attrs["batch_size"])
        self._samples = None if self.complete else np.flatnonzero(np.repeat(done, bs)[:n])
        self._layers = {i["index"]: LayerInfo(**i) for i in self.attrs["layers"]}
        self.layer_names: list[str] = [self._layers[k].name for k in sorted(self._layers)]
        self._groups: dict[int | str, xr.Dataset] = {}

    def _select(self, da: xr.DataArray) -> xr.DataArray:
        return da if self._samples is None else da.isel(sample=self._samples)

    def _group(self, k: int | str) -> xr.Dataset:
        if isinstance(k, str):
            if k not in self.layer_names:
                raise HwloopError(f"{self.path}: no layer named {k!r} (layers: {', '.join(self.layer_names)})")
            k = self.layer_names.index(k)
        if k not in self._layers:
            raise HwloopError(f"{self.path}: no layer {k} (the run has {len(self._layers)} analog layers)")
        if k not in self._groups:
            self._groups[k] = xr.open_zarr(str(self.path), group=f"layers/{k}")
        return self._groups[k]

    def layer(self, k: int | str) -> xr.DataArray:
        """Outputs of analog layer ``k`` (index or name): (repeat, sample, neuron), with the layer's attrs."""
        g = self._group(k)
        return self._select(g["output"]).assign_attrs({**g.attrs, **g["output"].attrs})

    def clean(self, k: int | str) -> xr.DataArray:
        """Noise-free reference outputs of layer ``k``: (sample, neuron)."""
        return self._select(self._group(k)["clean"])

    @property
    def output(self) -> xr.DataArray:
        return self._select(self._root["output"])

    @property
    def graph_output_names(self) -> list[str]:
        """The graph outputs the store records (none in a store written before they were)."""
        return [o["name"] for o in self.attrs.get("graph_outputs", [])]

    def graph_output(self, name: str) -> xr.DataArray:
        """Graph output ``name`` as the run computed it: (repeat, sample, its own dims), with its attrs."""
        found = [o for o in self.attrs.get("graph_outputs", []) if o["name"] == name]
        if not found:
            raise HwloopError(f"{self.path}: no graph output {name!r} recorded "
                              f"(recorded: {', '.join(self.graph_output_names) or 'none'})")
        key = f"outputs/{found[0]['index']}"
        if key not in self._groups:
            self._groups[key] = xr.open_zarr(str(self.path), group=key)
        g = self._groups[key]
        return self._select(g["output"]).rename(name).assign_attrs({**g["output"].attrs, "name": name})

    @property
    def clean_output(self) -> xr.DataArray:
        return self._select(self._root["clean_output"])

    @property
    def labels(self) -> xr.DataArray:
        return self._select(self._root["label"])

    @property
    def accuracy(self) -> xr.DataArray:
        """Per-repeat accuracy over the completed samples: (repeat,)."""
        correct = self._select(self._root["correct"])
        return correct.astype("f8").mean("sample").rename("accuracy")

    def rebuild(self, model: str | Path | None = None, profile: str | Path | None = None, data=None):
        """This run's model, per-layer profiles and data from its provenance unless given, checked to
        reproduce its noise-free first layer (``hwloop.analysis.rebuild.RunInputs``)."""
        from .analysis.rebuild import rebuild_run

        return rebuild_run(self, model, profile, data)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{0 if self._samples is None else len(self._samples)} samples done"
        return f"Run({str(self.path)!r}, {len(self.layer_names)} layers, {state})"


def open_run(path: str | Path) -> Run:
    """Open a run store for reading (the contract in docs/design.md)."""
    return Run(path)


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Around code that reads a store's arrays: a chunk zarr cannot read or decode (a corrupt or
    truncated file) becomes one HwloopError naming the store; other errors pass unchanged."""
    try:
        yield
    except HwloopError:
        raise
    except Exception as e:
        if not (isinstance(e, OSError) or _raised_in_zarr(e.__traceback__)):
            raise
        text = str(e).strip().splitlines()
        raise HwloopError(f"{path}: damaged store: cannot read its data "
                          f"({type(e).__name__}: {text[0] if text else 'unreadable chunk'})") from None


def _raised_in_zarr(tb) -> bool:
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith(("zarr.", "numcodecs")):
            return True
        tb = tb.tb_next
    return False
