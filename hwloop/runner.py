"""Execute an imported model batch by batch on devices, carrying repetitions through.

The first analog layer sees each sample once and returns R repetitions; every
later step (glue and analog) then works on R x B rows, so layer k+1 sees every
repetition of layer k and noise accumulates as on hardware.  A noise-free
reference pass (ideal arithmetic, no repetitions) runs beside it, because the
analysis compares every layer against it.

When a layer runs on a remote device (a chip behind a bench controller), the
batches go through as a pipeline: each analog layer and the glue after it is a
stage, and while layer k's chip measures batch b, layer k+1's chip works on
batch b-1 and the host records batch b-2.  The numbers do not depend on the
schedule (randomness is keyed by layer and batch), and batches are still
recorded in order, each once.
"""

from __future__ import annotations

import functools
import hashlib
import shlex
import sys
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .data import Dataset, load_data
from .devices import Device, Emulator
from .errors import DeviceError, HwloopError
from .files import store_lock
from .inputs import labels_in_range, require_disk, require_memory
from .graph import Glue, Model, load_model, node_label
from .layer import AnalogLayer
from .lowering import im2col, on_device, per_sample, run_product_layer, run_recurrent_layer  # noqa: F401 (im2col, per_sample: API)
from .store import LayerInfo, RunWriter

#: default batch: the largest whose widest step (repeat x batch x values) stays under this many float32
_BATCH_BUDGET = 2 ** 24
_MAX_DEFAULT_BATCH = 1000
#: a pipelined run's default batch gives each stage (analog layers + recording) at least this many
_BATCHES_PER_STAGE = 4


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


def run_model(model: Model | str | Path, data: Dataset | str, *,
              devices: Device | Mapping[int, Device] | None = None, repeats: int = 1, seed: int = 0,
              batch_size: int | None = None, out: str | Path | None = None, resume: bool = False,
              overwrite: bool = False, progress: bool = False, provenance: dict | None = None,
              pipeline: bool | None = None, scheduler: str | None = None,
              workers: int | None = None) -> RunResult:
    """Run ``model`` on ``data`` with ``repeats`` repetitions; record into ``out`` (a run store) if given.

    ``pipeline``: overlap the layers' devices across batches (see the module docstring); by
    default on when a device is remote and no two layers share one.  Same numbers either way.
    ``scheduler`` (``tcp://HOST:PORT``) or ``workers`` (a local Dask cluster of that many
    processes): shard the batches across Dask workers (emulators only; ``hwloop.distributed``),
    writing the same store bytes as this process would.

    ``out`` is written under its writer's lock (``hwloop.files.store_lock``): a second process
    writing the same path gets a HwloopError.
    """
    kw = dict(devices=devices, repeats=repeats, seed=seed, batch_size=batch_size, out=out, resume=resume,
              overwrite=overwrite, progress=progress, provenance=provenance, pipeline=pipeline,
              scheduler=scheduler, workers=workers)
    if out is None:
        return _run_model(model, data, **kw)
    with store_lock(out):
        return _run_model(model, data, **kw)


def _run_model(model: Model | str | Path, data: Dataset | str, *, devices: Device | Mapping[int, Device] | None,
               repeats: int, seed: int, batch_size: int | None, out: str | Path | None, resume: bool,
               overwrite: bool, progress: bool, provenance: dict | None, pipeline: bool | None,
               scheduler: str | None, workers: int | None) -> RunResult:
    if scheduler or workers:
        from .distributed import run_sharded

        return run_sharded(model, data, devices=devices, repeats=repeats, seed=seed, batch_size=batch_size,
                           out=out, resume=resume, overwrite=overwrite, progress=progress,
                           provenance=provenance, scheduler=scheduler, workers=workers)
    setup = prepare(model, data, devices, repeats=repeats, seed=seed, batch_size=batch_size, out=out,
                    resume=resume, overwrite=overwrite, provenance=provenance, pipeline=pipeline)
    model, ds, x, writer, attrs, per_layer = setup.model, setup.ds, setup.x, setup.writer, setup.attrs, setup.per_layer
    todo = setup.todo()
    mem = None if writer else _Memory()
    stages = _stages(model)
    flights: dict[int, _Flight] = {}
    bar = progress_bar(setup.n_batches, len(todo), progress)

    def work(stage: int, item: int) -> None:
        """Stage ``stage`` of batch ``todo[item]``: an analog layer and its glue, or (last) the record."""
        b = todo[item]
        if stage == 0:
            sl = setup.rows(b)
            flights[item] = _Flight(sl, {k: (v, 1) for k, v in _rows(x, sl).items()})
        f = flights[item]
        if stage < len(stages):
            _run_steps(model, stages[stage], f.env, f.recorded,
                       lambda L, v, r, step=None: setup.noisy.run(L, v, r, b, step), repeats)
            return
        del flights[item]
        layers, output = f.recorded, _output(model, f.env, repeats)
        clean, clean_out = setup.reference(_rows(x, f.rows), layers, output)
        if writer:
            writer.write_batch(b, layers=layers, clean=clean, output=output, clean_output=clean_out,
                               labels=ds.y[f.rows])
        else:
            mem.put(layers, clean, output, clean_out)
        bar.update(1)

    finished = False
    try:
        _pipeline(len(todo), len(stages) + 1, work, overlap=attrs["pipelined"],
                  on_interrupt=lambda: [d.interrupt() for d in per_layer])
        finished = True
    finally:
        bar.close(quiet=not finished)
        try:   # the devices' counters (measurements, retries, faults survived) as this session leaves them
            attrs["devices"] = _describe_devices(model, per_layer)
            if writer:
                writer.update_attrs(devices=attrs["devices"])
        except Exception:
            if finished:
                raise                  # after a failure, its own error is the one to report
    if writer:
        return RunResult(accuracy=writer.finish(), path=writer.path, labels=ds.y, attrs=attrs)
    layers, clean, output, clean_out = mem.arrays()
    pred = output.argmax(axis=2)
    return RunResult(accuracy=(pred == ds.y[None, :]).mean(axis=1), layers=layers, clean_layers=clean,
                     output=output, clean_output=clean_out, labels=ds.y, attrs=attrs)


@dataclass
class Setup:
    """A run ready to go: inputs, programmed devices, batch geometry, provenance, and its store if any."""

    model: Model
    ds: Dataset
    x: dict[str, np.ndarray]        # the model's graph inputs (name -> all samples)
    per_layer: list[Device]
    noisy: "_Devices"
    ideal: "_Ideal"
    repeats: int
    batch_size: int
    attrs: dict
    writer: RunWriter | None

    @property
    def n_batches(self) -> int:
        return -(-len(self.ds) // self.batch_size)

    @property
    def all_ideal(self) -> bool:
        return all(getattr(d, "ideal", False) for d in self.per_layer)

    def rows(self, b: int) -> slice:
        """The samples of batch ``b``."""
        return slice(b * self.batch_size, min(len(self.ds), (b + 1) * self.batch_size))

    def inputs(self, b: int) -> dict[str, np.ndarray]:
        """The graph inputs of batch ``b``."""
        return _rows(self.x, self.rows(b))

    def todo(self) -> list[int]:
        """The batches still to run (all of them, or those without a marker in a resumed store)."""
        done = self.writer.done() if self.writer else np.zeros(self.n_batches, bool)
        return [b for b, d in enumerate(done) if not d]

    def reference(self, xb: dict[str, np.ndarray], layers: list[np.ndarray], output: np.ndarray):
        """The noise-free (layers, output) of one batch, given its noisy run."""
        return reference(self.model, self.ideal, self.all_ideal, xb, layers, output)


def prepare(model: Model | str | Path, data: Dataset | str, devices: Device | Mapping[int, Device] | None, *,
            repeats: int, seed: int, batch_size: int | None, out: str | Path | None, resume: bool,
            overwrite: bool, provenance: dict | None, pipeline: bool | None) -> Setup:
    """Check everything, program the devices and create (or reopen, to resume) the store."""
    model = model if isinstance(model, Model) else load_model(model)
    ds = data if isinstance(data, Dataset) else load_data(data)
    if repeats < 1:
        raise HwloopError(f"repeats must be at least 1, got {repeats}")
    x = model_inputs(model, ds)
    per_layer = resolve_devices(model, devices)
    pipelined = _pipelined(per_layer, pipeline)
    n = len(ds)
    bs = int(batch_size) if batch_size is not None else default_batch_size(model, repeats, n, pipelined)
    if bs < 1:
        raise HwloopError(f"batch size must be at least 1, got {batch_size}")
    bs = min(bs, n)
    ideal = _Ideal(model)
    probe_layers, probe = _forward(model, _rows(x, slice(0, 2)), ideal.run, repeats=1)  # a bad shape fails here, storeless
    if probe.shape[2] > 1:      # a classifier's outputs: labels must name one (one output: no classes to check)
        labels_in_range(ds.y, probe.shape[2], ds.name, model.path)
    _require_room(model, repeats, n, bs, probe.shape[2], out)
    noisy = _Devices(model, per_layer, seed)   # programmed first: describe() then reports tiling etc.
    attrs = _provenance(model, ds, x, per_layer, seed, repeats, bs, provenance, hash_data=out is not None)
    attrs["pipelined"] = pipelined

    writer = None
    if out is not None:
        if resume and Path(out).exists():
            writer = RunWriter.resume(out, attrs)
        else:
            writer = RunWriter.create(out, layers=[_layer_info(L, p) for L, p in zip(model.layers, probe_layers)], n_samples=n,
                                      n_classes=probe.shape[2], batch_size=bs, repeats=repeats, attrs=attrs,
                                      overwrite=overwrite)
    return Setup(model, ds, x, per_layer, noisy, ideal, repeats, bs, attrs, writer)


def run_batch(model: Model, noisy: "_Devices", ideal: "_Ideal", all_ideal: bool, xb: dict[str, np.ndarray], batch: int,
              repeats: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Batch number ``batch`` (inputs ``xb``) through every step: (layers, clean layers, output, clean output),
    exactly what the sequential runner records for it."""
    layers, output = _forward(model, xb, lambda L, v, r, step=None: noisy.run(L, v, r, batch, step), repeats)
    clean, clean_out = reference(model, ideal, all_ideal, xb, layers, output)
    return layers, clean, output, clean_out


def reference(model: Model, ideal: "_Ideal", all_ideal: bool, xb: dict[str, np.ndarray], layers: list[np.ndarray],
              output: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The noise-free (layers, output) of a batch; with ideal devices, repetition 0 of the run itself."""
    if not all_ideal:
        layers, output = _forward(model, xb, ideal.run, repeats=1)
    return [a[0] for a in layers], output[0]


def progress_bar(total: int, todo: int, show: bool):
    """The run's progress (``hwloop.progress``, batches), starting at those already done."""
    from .progress import Progress

    return Progress(total, "hwloop run", unit="batch", initial=total - todo, enabled=show)


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


def _rows(x: dict[str, np.ndarray], sl) -> dict[str, np.ndarray]:
    return {k: v[sl] for k, v in x.items()}


def _all_finite(x: np.ndarray) -> bool:
    """NaN/inf check in one multithreaded pass (a sum is non-finite when any element is); exact check only then."""
    total = torch.from_numpy(x).sum() if x.dtype == np.float32 and x.flags.c_contiguous else x.sum()
    return bool(np.isfinite(float(total))) or bool(np.isfinite(x).all())


def resolve_devices(model: Model, devices: Device | Mapping[int, Device] | None) -> list[Device]:
    """One device per analog layer: None -> a fresh ideal Emulator each; one Device -> shared by all.

    A device profile's per-layer overrides must name layers of this model (however the devices were made)."""
    if devices is None:
        return [Emulator() for _ in model.layers]
    if isinstance(devices, Device):
        per_layer = [devices] * len(model.layers)
    else:
        extra = sorted(set(devices) - set(range(len(model.layers))))
        if extra:
            raise HwloopError(f"devices given for layer(s) {extra}, but {model.path.name} has analog layers "
                              f"0..{len(model.layers) - 1}")
        per_layer = [devices.get(k) or Emulator() for k in range(len(model.layers))]
    for profile in {id(p): p for p in (getattr(d, "profile", None) for d in per_layer)
                    if hasattr(p, "check_layers")}.values():
        profile.check_layers(model.layers)
    return per_layer


def _require_room(model: Model, repeats: int, n: int, bs: int, n_classes: int, out: str | Path | None) -> None:
    """Refuse, with the figure, a run whose arrays cannot fit in memory (or its store on disk)."""
    neurons = sum(L.n_out * _positions(L) for L in model.layers) + n_classes
    # one batch in flight per stage: every layer's input and output, noisy and noise-free, float32
    per_batch = 4.0 * 2 * (repeats + 1) * bs * sum((L.n_in + L.n_out) * _positions(L) for L in model.layers)
    held = 0.0 if out is not None else 4.0 * (repeats + 1) * n * neurons   # without a store: all in memory
    hint = "lower --repeats or --batch-size" + ("" if out is not None else ", or record into a store")
    require_memory(per_batch * (len(model.layers) + 1) + held, f"a run of {repeats} repeats x {n} samples", hint)
    if out is not None:
        require_disk(4.0 * (repeats + 1) * n * neurons + 9.0 * repeats * n, out, "the run store", "lower --repeats")


def _pipelined(per_layer: list[Device], asked: bool | None) -> bool:
    """Whether to pipeline: by default when a device is remote (the host would otherwise wait on
    it) and no two layers share hardware, which cannot work on two batches at once."""
    first: dict[int, int] = {}
    for k, d in enumerate(per_layer):
        j = first.setdefault(id(d.hardware), k)
        if j != k:
            if asked:
                raise HwloopError(f"cannot pipeline: layers {j} and {k} run on the same device "
                                  f"({type(d).__name__}); give each layer its own, or pipeline=False")
            return False
    return any(d.remote for d in per_layer) if asked is None else asked


def default_batch_size(model: Model, repeats: int, n: int, pipelined: bool = False) -> int:
    """Largest batch keeping repeat x batch x (widest step per sample) under ~64 MB of float32;
    pipelined, also small enough for 4 batches per stage, so the devices spend little time
    waiting for the pipeline to fill and drain."""
    widest = max(max(L.n_in, L.n_out) * _positions(L) for L in model.layers)
    bs = min(n, _MAX_DEFAULT_BATCH, _BATCH_BUDGET // (repeats * widest))
    if pipelined:
        bs = min(bs, -(-n // (_BATCHES_PER_STAGE * (len(model.layers) + 1))))
    return max(1, bs)


def derive_seed(seed: int, index: int) -> int:
    """The static seed of layer ``index`` (programming noise), from the run's seed."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1, np.uint32)[0])


def _positions(layer: AnalogLayer) -> int:
    return layer.positions or 1


def _layer_info(layer: AnalogLayer, probe: np.ndarray) -> LayerInfo:
    """The store's description of a layer; its neurons per sample as the probe batch recorded them (a
    sequence's length may be known only from the data)."""
    return LayerInfo(index=layer.index, name=layer.name, op=layer.meta["ops"], activation=layer.activation,
                     neurons=int(probe.shape[2]))


class _Devices:
    """Programs each device with its layer (reprogramming a device shared between layers)."""

    def __init__(self, model: Model, per_layer: list[Device], seed: int):
        self.per_layer, self.seed = per_layer, seed
        self.loaded: dict[int, int] = {}     # id(device) -> layer index it holds
        for layer, dev in zip(model.layers, per_layer):
            self._program(dev, layer)

    def _program(self, dev: Device, layer: AnalogLayer) -> None:
        if self.loaded.get(id(dev)) != layer.index:
            try:
                dev.program(layer, seed=derive_seed(self.seed, layer.index))
            except HwloopError as e:
                if dev.origin is None:
                    raise
                kind = DeviceError if isinstance(e, DeviceError) else HwloopError
                raise kind(f"{dev.origin}: layer {layer.index} ({layer.name!r}): {e}") from None
            except Exception as e:      # a plug-in's own failure: name where it was declared
                where = dev.origin or type(dev).__name__
                raise HwloopError(f"{where}: program(layer {layer.index} {layer.name!r}) failed: "
                                  f"{type(e).__name__}: {e}") from None
            self.loaded[id(dev)] = layer.index

    def run(self, layer: AnalogLayer, x: np.ndarray, repeats: int, batch: int, step: int | None = None) -> np.ndarray:
        """Layer ``layer`` on batch ``batch`` (and time ``step`` of a recurrent layer: fresh draws per step)."""
        dev = self.per_layer[layer.index]
        self._program(dev, layer)
        key = (self.seed, layer.index, batch) + (() if step is None else (step,))
        try:
            return on_device(dev, layer, x, repeats, key=key)
        except ValueError as e:
            raise HwloopError(f"layer {layer.index} ({layer.name!r}): {e}") from None


class _Ideal:
    """Noise-free arithmetic for the reference pass: one ideal Emulator per layer."""

    def __init__(self, model: Model):
        self.emulators = []
        for layer in model.layers:
            emu = Emulator()
            emu.program(layer)
            self.emulators.append(emu)

    def run(self, layer: AnalogLayer, x: np.ndarray, repeats: int, step: int | None = None) -> np.ndarray:
        return on_device(self.emulators[layer.index], layer, x, repeats)


class _Memory:
    """Whole-run arrays when no store is written: batches are kept as computed and joined once."""

    def __init__(self):
        self.batches: list[tuple] = []

    def put(self, layers, clean, output, clean_out) -> None:
        self.batches.append((layers, clean, output, clean_out))

    def arrays(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
        """(layers, clean layers, output, clean output), each joined along the sample axis."""
        def join(parts, axis):
            return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis=axis)

        n_layers = len(self.batches[0][0])
        layers = [join([b[0][k] for b in self.batches], 1) for k in range(n_layers)]
        clean = [join([b[1][k] for b in self.batches], 0) for k in range(n_layers)]
        return layers, clean, join([b[2] for b in self.batches], 1), join([b[3] for b in self.batches], 0)


@dataclass
class _Flight:
    """A batch on its way through the stages: its rows, tensors so far, recorded layer outputs."""

    rows: slice
    env: dict
    recorded: list = field(default_factory=list)


def _stages(model: Model) -> list[list]:
    """The steps grouped per analog layer: stage k is layer k and the glue up to layer k+1
    (stage 0 also takes the glue before the first layer)."""
    stages: list[list] = [[]]
    for step in model.steps:
        if isinstance(step, AnalogLayer) and any(isinstance(s, AnalogLayer) for s in stages[-1]):
            stages.append([])
        stages[-1].append(step)
    return stages


def _pipeline(n_items: int, n_stages: int, work: Callable[[int, int], None], overlap: bool,
              on_interrupt: Callable[[], object] = lambda: None) -> None:
    """Call ``work(stage, item)`` for every stage of every item, an item's stages in order.

    Without ``overlap``: item by item.  With it, a software pipeline: one thread per stage,
    each taking items in order from the stage before (at most one waiting between two stages),
    so the stages work on successive items at once.  When a stage fails, the stages after it
    finish the items they already have and the run stops with its error; Ctrl-C stops every
    stage after its current step, which ``on_interrupt`` can cut short (the devices' ``interrupt``).
    """
    if not overlap:
        for i in range(n_items):
            for s in range(n_stages):
                work(s, i)
        return
    queues = [queue.Queue(maxsize=1) for _ in range(n_stages)]
    halted = [threading.Event() for _ in range(n_stages)]      # stage s must not start another item
    errors: list[tuple[int, BaseException]] = []

    def hand_on(s: int, item: int | None) -> bool:
        """Pass ``item`` (None: no more) to stage s; False when stage s was halted meanwhile."""
        while not halted[s].is_set():
            try:
                queues[s].put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def taken(s: int):
        """The items stage s gets, until the stage before says there are no more or s is halted."""
        if s == 0:
            yield from range(n_items)
            return
        while not halted[s].is_set():
            try:
                item = queues[s].get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item

    def stage(s: int) -> None:
        try:
            for i in taken(s):
                if halted[s].is_set():
                    return
                work(s, i)
                if s + 1 < n_stages and not hand_on(s + 1, i):
                    return
        except BaseException as e:      # noqa: B036 -- reported by the caller's thread
            errors.append((s, e))
            for t in range(s + 1):
                halted[t].set()
        finally:
            if s + 1 < n_stages:
                hand_on(s + 1, None)
            finished[s].set()

    # Waiting on events, not Thread.join: a Ctrl-C inside join() makes Python 3.11 think the
    # thread ended (bpo-45274's fix releases its lock), and the run would go on without it.
    finished = [threading.Event() for _ in range(n_stages)]
    for s in range(n_stages):
        threading.Thread(target=stage, args=(s,), name=f"hwloop-stage-{s}", daemon=True).start()
    interrupted = False
    for ev in finished:
        while not ev.is_set():
            try:
                ev.wait(0.1)              # a timeout: Python runs signal handlers between waits
            except KeyboardInterrupt:     # every stage stops after its current step
                interrupted = True
                for h in halted:
                    h.set()
                on_interrupt()
    if interrupted:
        raise KeyboardInterrupt
    if errors:
        raise min(errors, key=lambda e: e[0])[1]


def _forward(model: Model, xb: dict[str, np.ndarray], run_layer: Callable, repeats: int):
    """One batch through every step.  Tensors are kept as (rows, ...) arrays with rows = r x B
    (repetition-major) and their r; returns each layer's (R, B, neurons) and the output (R, B, C)."""
    env: dict[str, tuple[np.ndarray, int]] = {k: (v, 1) for k, v in xb.items()}
    recorded: list[np.ndarray] = []
    _run_steps(model, model.steps, env, recorded, run_layer, repeats)
    return recorded, _output(model, env, repeats)


def _run_steps(model: Model, steps: list, env: dict, recorded: list, run_layer: Callable, repeats: int) -> None:
    """Run ``steps`` on one batch's tensors ``env`` (name -> (rows array, r)); layer outputs go to ``recorded``."""
    B = len(env[model.input_name][0])
    for step in steps:
        if isinstance(step, Glue):
            _run_glue(model, step, env, B)
            continue
        arr, r = env[step.input]
        if step.recurrent is not None:
            y, rec, extra = run_recurrent_layer(step, arr, r, B, repeats, run_layer)
            env.update({t: (v, repeats) for t, v in extra.items()})
        else:
            y, rec = run_product_layer(step, arr, r, B, repeats, run_layer)
        recorded.append(rec)
        env[step.output] = (y, repeats)


def _output(model: Model, env: dict, repeats: int) -> np.ndarray:
    """The model's output as (R, B, C) float32."""
    B = len(env[model.input_name][0])
    out, r = env[model.output_name]
    out = np.asarray(out, dtype=np.float32).reshape(r, B, -1)
    if r != repeats:
        out = np.broadcast_to(out, (repeats,) + out.shape[1:])
    return out


def _run_glue(model: Model, glue: Glue, env: dict, B: int) -> None:
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


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    import hwloop

    out = {"hwloop": hwloop.__version__}
    for pkg in ("torch", "onnxruntime", "onnx", "numpy", "zarr"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _describe_devices(model: Model, per_layer: list[Device]) -> list[dict]:
    return [{"layer": L.index, "name": L.name, **dev.describe(), **({"origin": dev.origin} if dev.origin else {})}
            for L, dev in zip(model.layers, per_layer)]


def _provenance(model: Model, ds: Dataset, x: np.ndarray, per_layer: list[Device], seed: int, repeats: int,
                batch_size: int, extra: dict | None, hash_data: bool) -> dict:
    """Everything needed to say where a run's numbers came from (and to check a resume)."""
    attrs = {
        "model_path": str(model.path.resolve()), "model_sha256": model.sha256, "data": ds.name, "n_samples": len(ds),
        "seed": int(seed), "repeats": int(repeats), "batch_size": int(batch_size),
        "devices": _describe_devices(model, per_layer),
        "versions": dict(_versions()), "start_time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": shlex.join(sys.argv),
    }
    if hash_data:
        h = hashlib.sha256()
        for arr in x.values():
            h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))   # no copy of the data
        h.update(memoryview(np.ascontiguousarray(ds.y)).cast("B"))
        attrs["data_sha256"] = h.hexdigest()
    attrs.update(extra or {})
    return attrs
