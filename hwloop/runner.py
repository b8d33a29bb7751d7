"""Execute an imported model batch by batch on devices, carrying repetitions through.

The first analog layer sees each sample once and returns R repetitions; every
later step (glue and analog) then works on R x B rows, so layer k+1 sees every
repetition of layer k and noise accumulates as on hardware.  A noise-free
reference pass (ideal arithmetic, no repetitions) runs beside it, because the
analysis compares every layer against it.

When a layer runs on a remote device (a chip behind a bench controller), the
batches go through as a pipeline (``hwloop.pipeline``): each analog layer and
the glue after it is a stage, and while layer k's chip measures batch b, layer
k+1's chip works on batch b-1 and the host records batch b-2.  The numbers do
not depend on the schedule (randomness is keyed by layer and batch), and
batches are still recorded in order, each once.

Where the rest lives: walking one batch through the steps in
``hwloop.forward``, the data as graph inputs in ``hwloop.feeds``, the result in
``hwloop.result``, provenance in ``hwloop.provenance``, the Dask-sharded run in
``hwloop.distributed``.  Their public names stay importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from .data import Dataset, load_data
from .devices import Device
from .errors import HwloopError
from .feeds import model_input, model_inputs
from .files import store_lock
from .forward import forward, graph_outputs, output, rows, run_steps, stages, walk
from .graph import Model, load_model
from .inputs import labels_in_range, require_disk, require_memory
from .layer import AnalogLayer
from .lowering import im2col, on_device, per_sample, takes_whole
from .pipeline import run_pipeline as _pipeline
from .provenance import describe_devices, run_provenance
from .run_devices import ProgrammedDevices, IdealDevices, derive_seed, resolve_devices
from .result import Collected, MemoryRun, RunResult
from .store import LayerInfo, OutputInfo, RunWriter

__all__ = ["RunSettings", "RunResult", "MemoryRun", "Setup", "run_model", "prepare", "run_batch", "reference",
           "progress_bar", "resolve_devices", "default_batch_size", "derive_seed", "model_input", "model_inputs",
           "im2col", "on_device", "per_sample"]

#: default batch: the largest whose widest step (repeat x batch x values) stays under this many float32
_BATCH_BUDGET = 2 ** 24
_MAX_DEFAULT_BATCH = 1000
#: a pipelined run's default batch gives each stage (analog layers + recording) at least this many
_BATCHES_PER_STAGE = 4


@dataclass(frozen=True)
class RunSettings:
    """How to run a model: its devices, repetitions, seed, batches, store, and where to compute.

    ``pipeline``: overlap the layers' devices across batches (see the module docstring); by
    default on when a device is remote and no two layers share one.  Same numbers either way.
    ``scheduler`` (``tcp://HOST:PORT``) or ``workers`` (a local Dask cluster of that many
    processes): shard the batches across Dask workers (emulators only; ``hwloop.distributed``),
    writing the same store bytes as this process would.
    ``device`` (``cpu``, ``cuda[:N]``): where the emulators compute (``hwloop.physics.compute_device``):
    the ideal ones the runner makes, the reference pass, and copies of the given emulators that name
    no device of their own; ``cpu`` gives the default numbers bit for bit.
    """

    devices: Device | Mapping[int, Device] | None = None
    repeats: int = 1
    seed: int = 0
    batch_size: int | None = None
    out: str | Path | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    provenance: dict | None = None
    pipeline: bool | None = None
    scheduler: str | None = None
    workers: int | None = None
    device: str | None = None

    @classmethod
    def of(cls, settings: "RunSettings | None", options: dict, caller: str = "run_model") -> "RunSettings":
        """``settings`` (default: the defaults) with ``options`` (keyword arguments named like the fields) applied."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword argument(s): {', '.join(unknown)}")
        return replace(settings or cls(), **options)


def run_model(model: Model | str | Path, data: Dataset | str, settings: RunSettings | None = None,
              **options) -> RunResult:
    """Run ``model`` on ``data``; record into ``out`` (a run store) if given.

    Settings come as a ``RunSettings``, as keyword arguments named like its fields
    (``devices=``, ``repeats=``, ``seed=``, ``out=``, ...), or both (the keywords win).

    ``out`` is written under its writer's lock (``hwloop.files.store_lock``): a second process
    writing the same path gets a HwloopError.
    """
    s = RunSettings.of(settings, options)
    if s.out is None:
        return _run_model(model, data, s)
    with store_lock(s.out):
        return _run_model(model, data, s)


def _run_model(model: Model | str | Path, data: Dataset | str, s: RunSettings) -> RunResult:
    if s.scheduler or s.workers:
        from .distributed import run_sharded

        return run_sharded(model, data, s)
    setup = prepare(model, data, s)
    todo = setup.todo()
    stage = _Stages(setup, todo, setup.writer or Collected(), progress_bar(setup.n_batches, len(todo), s.progress))
    finished = False
    try:
        _pipeline(len(todo), stage.n_stages, stage, overlap=setup.attrs["pipelined"],
                  on_interrupt=lambda: [d.interrupt() for d in setup.per_layer])
        finished = True
    finally:
        stage.bar.close(quiet=not finished)
        try:   # the devices' counters (measurements, retries, faults survived) as this session leaves them
            setup.attrs["devices"] = describe_devices(setup.model.layers, setup.per_layer)
            if setup.writer:
                setup.writer.update_attrs(devices=setup.attrs["devices"])
        except Exception:
            if finished:
                raise                  # after a failure, its own error is the one to report
    if setup.writer:
        return RunResult(accuracy=setup.writer.finish(), path=setup.writer.path, labels=setup.ds.y,
                         attrs=setup.attrs)
    return stage.sink.result(setup.ds.y, setup.attrs, [L.name for L in setup.model.layers])


@dataclass
class _Flight:
    """A batch on its way through the stages: its rows, tensors so far, recorded layer outputs."""

    rows: slice
    env: dict
    recorded: list = field(default_factory=list)


class _Stages:
    """``work(stage, item)`` of a local run: stage k runs analog layer k and its glue on batch ``todo[item]``;
    the last stage adds the reference pass and records the batch (into the store, or kept in memory)."""

    def __init__(self, setup: "Setup", todo: list[int], sink: RunWriter | Collected, bar):
        self.setup, self.todo, self.sink, self.bar = setup, todo, sink, bar
        self.stages = stages(setup.model)
        self.n_stages = len(self.stages) + 1
        self.flights: dict[int, _Flight] = {}

    def __call__(self, stage: int, item: int) -> None:
        setup, b = self.setup, self.todo[item]
        if stage == 0:
            sl = setup.rows(b)
            self.flights[item] = _Flight(sl, {k: (v, 1) for k, v in rows(setup.x, sl).items()})
        f = self.flights[item]
        if stage < len(self.stages):
            run_steps(setup.model, self.stages[stage], f.env, f.recorded,
                      lambda L, v, r, step=None: setup.noisy.run(L, v, r, b, step), setup.repeats)
            return
        del self.flights[item]
        layers, out = f.recorded, output(setup.model, f.env, setup.repeats)
        outs = graph_outputs(setup.model, f.env, setup.repeats)
        clean, clean_out = setup.reference(rows(setup.x, f.rows), layers, out)
        if isinstance(self.sink, RunWriter):
            self.sink.write_batch(b, layers=layers, clean=clean, output=out, clean_output=clean_out,
                                  labels=setup.ds.y[f.rows], graph_outputs=outs)
        else:
            self.sink.put(layers, clean, out, clean_out, outs)
        self.bar.update(1)


@dataclass
class Setup:
    """A run ready to go: inputs, programmed devices, batch geometry, provenance, and its store if any."""

    model: Model
    ds: Dataset
    x: dict[str, np.ndarray]        # the model's graph inputs (name -> all samples)
    per_layer: list[Device]
    noisy: "ProgrammedDevices"
    ideal: "IdealDevices"
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
        return rows(self.x, self.rows(b))

    def todo(self) -> list[int]:
        """The batches still to run (all of them, or those without a marker in a resumed store)."""
        done = self.writer.done() if self.writer else np.zeros(self.n_batches, bool)
        return [b for b, d in enumerate(done) if not d]

    def reference(self, xb: dict[str, np.ndarray], layers: list[np.ndarray], output: np.ndarray):
        """The noise-free (layers, output) of one batch, given its noisy run."""
        return reference(self.model, self.ideal, self.all_ideal, xb, layers, output)


def prepare(model: Model | str | Path, data: Dataset | str, settings: RunSettings | None = None,
            **options) -> Setup:
    """Check everything, program the devices and create (or reopen, to resume) the store."""
    s = RunSettings.of(settings, options, "prepare")
    model = model if isinstance(model, Model) else load_model(model)
    ds = data if isinstance(data, Dataset) else load_data(data)
    if s.repeats < 1:
        raise HwloopError(f"repeats must be at least 1, got {s.repeats}")
    x = model_inputs(model, ds)
    per_layer = resolve_devices(model, s.devices, s.device)
    pipelined = _pipelined(per_layer, s.pipeline)
    n = len(ds)
    bs = int(s.batch_size) if s.batch_size is not None else default_batch_size(model, s.repeats, n, pipelined)
    if bs < 1:
        raise HwloopError(f"batch size must be at least 1, got {s.batch_size}")
    bs = min(bs, n)
    ideal = IdealDevices(model, s.device)
    # a bad shape fails here, before any store exists
    inputs: dict[int, int] = {}         # each layer's input tensor, values per sample (a Conv's before unfolding)

    def probe_run(L: AnalogLayer, v: np.ndarray, r: int, step: int | None = None) -> np.ndarray:
        inputs[L.index] = int(np.prod(np.shape(v)[2:]))
        return ideal.run(L, v, r, step)

    probe_layers, env = walk(model, rows(x, slice(0, 2)), probe_run, repeats=1)
    probe = output(model, env, 1)
    outs = [OutputInfo.of(k, name, v) for k, (name, v) in enumerate(graph_outputs(model, env, 1).items())]
    if probe.shape[2] > 1:      # a classifier's outputs: labels must name one (one output: no classes to check)
        labels_in_range(ds.y, probe.shape[2], ds.name, model.path)
    _require_room(model, s.repeats, n, bs, probe.shape[2] + sum(int(np.prod(o.shape)) for o in outs), s.out,
                  pipelined, batch_values(model, per_layer, ideal.emulators, inputs))
    noisy = ProgrammedDevices(model, per_layer, s.seed)   # programmed first: describe() then reports tiling etc.
    attrs = run_provenance(model, ds, x, per_layer, s, bs)
    attrs["pipelined"] = pipelined
    if outs:
        attrs["graph_outputs"] = [vars(o) for o in outs]
    writer = None
    if s.out is not None:
        if s.resume and Path(s.out).exists():
            writer = RunWriter.resume(s.out, attrs)
        else:
            writer = RunWriter.create(s.out, layers=[_layer_info(L, p) for L, p in zip(model.layers, probe_layers)],
                                      n_samples=n, n_classes=probe.shape[2], batch_size=bs, repeats=s.repeats,
                                      attrs=attrs, overwrite=s.overwrite)
    return Setup(model, ds, x, per_layer, noisy, ideal, s.repeats, bs, attrs, writer)


def run_batch(model: Model, noisy: "ProgrammedDevices", ideal: "IdealDevices", all_ideal: bool,
              xb: dict[str, np.ndarray], batch: int, repeats: int
              ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, dict]:
    """Batch number ``batch`` (inputs ``xb``) through every step: (layers, clean layers, output, clean output,
    every graph output by name), exactly what the sequential runner records for it."""
    layers, env = walk(model, xb, lambda L, v, r, step=None: noisy.run(L, v, r, batch, step), repeats)
    out = output(model, env, repeats)
    clean, clean_out = reference(model, ideal, all_ideal, xb, layers, out)
    return layers, clean, out, clean_out, graph_outputs(model, env, repeats)


def reference(model: Model, ideal: "IdealDevices", all_ideal: bool, xb: dict[str, np.ndarray], layers: list[np.ndarray],
              output: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The noise-free (layers, output) of a batch; with ideal devices, repetition 0 of the run itself."""
    if not all_ideal:
        layers, output = forward(model, xb, ideal.run, repeats=1)
    return [a[0] for a in layers], output[0]


def progress_bar(total: int, todo: int, show: bool):
    """The run's progress (``hwloop.progress``, batches), starting at those already done."""
    from .progress import Progress

    return Progress(total, "hwloop run", unit="batch", initial=total - todo, enabled=show)


def batch_values(model: Model, per_layer: list[Device], ideal: list[Device], inputs: dict[int, int]) -> int:
    """Values per sample and repetition that a batch in flight holds: every layer's input and output, noisy
    (on ``per_layer``) and noise-free (on ``ideal``).  A Conv's input is its unfolded rows (n_in values per
    output position), unless its device takes it whole (``hwloop.lowering.takes_whole``): then the input
    tensor itself (``inputs``: values per sample by layer index, as the probe saw them)."""
    total = 0
    for L, dev, ref in zip(model.layers, per_layer, ideal):
        rows, out = L.n_in * _positions(L), L.n_out * _positions(L)
        whole = inputs.get(L.index, rows)
        total += 2 * out + (whole if takes_whole(dev, L) else rows) + (whole if takes_whole(ref, L) else rows)
    return total


def _require_room(model: Model, repeats: int, n: int, bs: int, n_outputs: int, out: str | Path | None,
                  pipelined: bool, values: int) -> None:
    """Refuse, with the figure, a run whose arrays cannot fit in memory (or its store on disk);
    ``n_outputs``: the values recorded per sample and repetition besides the layers' (class scores, graph outputs);
    ``values``: what a batch in flight holds per sample and repetition (``batch_values``)."""
    neurons = sum(L.n_out * _positions(L) for L in model.layers) + n_outputs
    # a batch in flight (one per stage when pipelined): every layer's input and output, noisy and noise-free
    in_flight = len(model.layers) + 1 if pipelined else 1
    per_batch = 4.0 * (repeats + 1) * bs * values
    held = 0.0 if out is not None else 4.0 * (repeats + 1) * n * neurons   # without a store: all in memory
    hint = "lower --repeats or --batch-size" + ("" if out is not None else ", or record into a store")
    require_memory(per_batch * in_flight + held, f"a run of {repeats} repeats x {n} samples", hint)
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


def _positions(layer: AnalogLayer) -> int:
    return layer.positions or 1


def _layer_info(layer: AnalogLayer, probe: np.ndarray) -> LayerInfo:
    """The store's description of a layer; its neurons per sample as the probe batch recorded them (a
    sequence's length may be known only from the data)."""
    return LayerInfo(index=layer.index, name=layer.name, op=layer.meta["ops"], activation=layer.activation,
                     neurons=int(probe.shape[2]))
