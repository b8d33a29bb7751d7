"""Runs that outgrow one machine: a run's batches sharded across Dask workers, one store.

Why batches: the noise of a batch is keyed by (seed, layer, batch), never by
where or when it runs, so a worker computing batch b produces exactly the
numbers the sequential runner would, and the store's chunks (one per batch
along ``sample``) come out byte for byte the same.

The client creates (or reopens, to resume) the store with
``hwloop.runner.prepare`` and sends each missing batch's inputs to a worker.
A worker that sees the store (same path, same store: a local cluster or a
shared file system) writes its batch's chunks and then its ``batch_done``
marker itself, with the store's own ``write_batch``, so the results do not
travel back through the client; otherwise the client writes each result as it
arrives.  Either way batches land in any order, each chunk file atomically,
the marker last.  A few batches per worker are in flight at a time, so memory
stays bounded however long the run.  Killing a worker loses only its batches
in flight (an unmarked batch is simply written again), which Dask recomputes
on another; killing the client leaves the finished batches marked, and
``--resume`` computes only the rest (with or without Dask).

A run without a store (``run_model(..., workers=N)`` with no ``out``) gets every
batch's result back and returns the run in memory, as the local runner does.
``summarise_sharded`` records nothing: each worker reduces its batch with a given
function and only that travels back (``hwloop check``'s looks: outputs and
per-sample noise sums, not every layer's values).

Emulators only: a chip stays on the machine that holds its connection.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .cluster import dask_client
from .data import Dataset
from .devices import Device, Emulator
from .errors import HwloopError
from .graph import Model, load_model
from .run_devices import ProgrammedDevices, IdealDevices, resolve_devices
from .result import Collected
from .runner import RunResult, RunSettings, prepare, progress_bar, run_batch
from .store import RunWriter, read_attrs

#: batches in flight per worker: enough to keep every worker busy while results are written
IN_FLIGHT_PER_WORKER = 3


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to compute any batch of one run (sent to each worker once)."""

    model_bytes: bytes
    model_name: str
    model_path: str
    model_sha256: str
    devices: tuple              # unprogrammed devices, one per layer (shared ones stay shared)
    seed: int
    repeats: int
    all_ideal: bool
    token: str                  # one per client session: what a worker caches its state under
    store: str                  # the run store, as the client sees it
    store_started: str          # its start time: a worker writes only into this very store
    device: str | None = None   # where the reference pass computes (the emulators carry their own)
    summary: Callable | None = None   # on the worker: what of each batch travels back (``summarise_sharded``)


class _WorkerState:
    """One worker process's model and programmed devices for a job (built once, reused by every batch)."""

    def __init__(self, job: ShardJob):
        self.model = _load_model(job)
        self.noisy = ProgrammedDevices(self.model, list(job.devices), job.seed)
        self.ideal = IdealDevices(self.model, job.device)
        self.lock = threading.Lock()          # a multi-threaded worker runs one batch at a time per job
        self.writer = _own_writer(job)


def _own_writer(job: ShardJob) -> RunWriter | None:
    """A writer into the client's store when this worker sees it (else None: results go back)."""
    if not job.store or not Path(job.store).is_dir():
        return None
    try:
        if read_attrs(job.store).get("start_time") != job.store_started:
            return None
        return RunWriter(job.store)
    except (HwloopError, OSError):
        return None


_STATES: dict[str, _WorkerState] = {}
_STATES_LOCK = threading.Lock()


#: the models this worker loaded, by sha256: the next job of the same model (``hwloop check``'s next look)
#: programs its devices without loading it again
_MODELS: dict[str, Model] = {}


def _load_model(job: ShardJob) -> Model:
    """The job's model (kept for later jobs of the same model; called under ``_STATES_LOCK``)."""
    if job.model_sha256 not in _MODELS:
        if len(_MODELS) > 2:
            _MODELS.clear()
        _MODELS[job.model_sha256] = _read_model(job)
    return _MODELS[job.model_sha256]


def _read_model(job: ShardJob) -> Model:
    """The job's model: the client's file when this machine sees the same bytes, else a private copy."""
    path = Path(job.model_path)
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == job.model_sha256:
        return load_model(path)
    folder = Path(tempfile.gettempdir()) / f"hwloop-shard-{job.model_sha256[:16]}"
    folder.mkdir(exist_ok=True)
    local = folder / job.model_name
    if not local.is_file():
        tmp = folder / f".{job.model_name}.{os.getpid()}"
        tmp.write_bytes(job.model_bytes)
        os.replace(tmp, local)
    return load_model(local)


def compute_shard(job: ShardJob, batch: int, xb: np.ndarray, labels: np.ndarray) -> tuple:
    """On a worker: batch ``batch`` of the run (inputs ``xb``), written into the store (result None)
    when this worker sees it, else the result is (layers, clean, output, clean output, graph outputs);
    with ``job.summary``, only ``job.summary(layers, clean, output, clean output)``.  Returns (result,
    what the devices counted for this batch: one dict per layer, see ``_counters``)."""
    with _STATES_LOCK:
        state = _STATES.get(job.token)
        if state is None:
            if len(_STATES) > 4:
                _STATES.clear()
            state = _STATES[job.token] = _WorkerState(job)
    with state.lock:
        before = _counters(state.noisy.per_layer)
        layers, clean, output, clean_out, outs = run_batch(state.model, state.noisy, state.ideal, job.all_ideal,
                                                           xb, batch, job.repeats)
        counted = [None if b is None else {k: v - b.get(k, 0) for k, v in a.items()}
                   for a, b in zip(_counters(state.noisy.per_layer), before)]
        if job.summary is not None:
            return job.summary(layers, clean, output, clean_out), counted
        if state.writer is not None:
            state.writer.write_batch(batch, layers=layers, clean=clean, output=output, clean_output=clean_out,
                                     labels=labels, graph_outputs=outs)
            return None, counted
    return ([np.ascontiguousarray(a) for a in layers], [np.ascontiguousarray(a) for a in clean],
            np.ascontiguousarray(output), np.ascontiguousarray(clean_out),
            {k: np.ascontiguousarray(v) for k, v in outs.items()}), counted


def check_shardable(per_layer: list[Device]) -> None:
    """Only emulators can move to a worker (a device whose ``hardware``, the unit doing the work, is an
    emulator: a wrapper such as ``check``'s per-look keys may go too); one clear line for anything else."""
    for k, dev in enumerate(per_layer):
        if dev.remote or not isinstance(dev.hardware, Emulator):
            where = f"{type(dev).__name__} ({dev.origin})" if getattr(dev, "origin", None) else type(dev).__name__
            raise HwloopError(f"layer {k} runs on {where}: --workers and "
                              "--scheduler shard emulator runs only (a chip stays on the machine that holds its "
                              "connection); run it without them")


def run_sharded(model: Model | str | Path, data: Dataset | str, settings: RunSettings | None = None, *,
                worker_writes: bool = True, client=None, **options) -> RunResult:
    """``run_model`` with its batches computed on Dask (``scheduler`` or a local cluster of ``workers``).

    Settings as ``run_model`` takes them (a ``RunSettings`` and/or keyword arguments).
    ``worker_writes=False``: every result travels back and the client writes it (what happens anyway
    for a worker that does not see the store).  Without ``out`` every result travels back and the run
    is returned in memory, as ``run_model`` returns it.  ``client``: a Dask client to use (and leave
    open) instead of connecting to ``scheduler``/starting ``workers`` for this run alone (``hwloop check``
    keeps one across its looks).  The devices' counters (``stats``: runs, clipped values) come back
    from the workers and are added to the given devices', as a local run leaves them.
    """
    s = RunSettings.of(settings, options, "run_sharded")
    setup, kept = _sharded(model, data, s, client, worker_writes=worker_writes)
    if setup.writer is None:
        collected = Collected()
        for b in sorted(kept):
            collected.put(*kept[b])
        return collected.result(setup.ds.y, setup.attrs, [L.name for L in setup.model.layers])
    return RunResult(accuracy=setup.writer.finish(), path=setup.writer.path, labels=setup.ds.y, attrs=setup.attrs)


def summarise_sharded(model: Model | str | Path, data: Dataset | str, summary: Callable,
                      settings: RunSettings | None = None, *, client=None, **options) -> list:
    """A run's batches computed on Dask, each reduced on its worker to ``summary(layers, clean, output,
    clean output)``: the summaries in batch order.  Nothing is recorded (no ``out``); only the summaries
    travel back.  ``summary`` travels by name: a module-level function.  Settings, ``client`` and the
    devices' counters as in ``run_sharded``.
    """
    s = RunSettings.of(settings, options, "summarise_sharded")
    if s.out is not None:
        raise HwloopError(f"summarise_sharded records nothing: give no out ({s.out})")
    _, kept = _sharded(model, data, s, client, summary=summary)
    return [kept[b] for b in sorted(kept)]


def _sharded(model: Model | str | Path, data: Dataset | str, s: RunSettings, client, *, worker_writes: bool = False,
             summary: Callable | None = None) -> tuple:
    """Set the run up here and compute its missing batches on Dask: (setup, {batch: what came back})."""
    model = model if isinstance(model, Model) else load_model(model)
    per_layer = resolve_devices(model, s.devices, s.device)
    check_shardable(per_layer)
    job_devices = tuple(copy.deepcopy(per_layer))     # unprogrammed: each worker programs its own
    where = ({"scheduler": s.scheduler} if s.scheduler else {"local_workers": int(s.workers)} if s.workers
             else {"scheduler": client.scheduler.address})
    setup = prepare(model, data, s, devices=dict(enumerate(per_layer)),
                    provenance={**(s.provenance or {}), "dask": where}, pipeline=False)
    job = ShardJob(model.path.read_bytes(), model.path.name, str(model.path.resolve()), model.sha256, job_devices,
                   int(s.seed), int(s.repeats), setup.all_ideal, uuid.uuid4().hex,
                   str(Path(s.out).resolve()) if worker_writes and s.out is not None else "",
                   str(setup.attrs["start_time"]), s.device, summary)
    todo = setup.todo()
    bar = progress_bar(setup.n_batches, len(todo), s.progress)
    kept: dict[int, object] = {}       # without a store: the batches' results, joined in order by the caller
    try:
        if todo and client is not None:
            _compute(client, job, setup, todo, bar, kept)
        elif todo:
            with dask_client(s.scheduler, s.workers) as own:
                _compute(own, job, setup, todo, bar, kept)
    finally:
        bar.close()
    return setup, kept


def _compute(client, job: ShardJob, setup, todo: list[int], bar, kept: dict) -> None:
    """Keep a few batches per worker in flight; write each result (and its marker) as it arrives (into
    ``kept`` when the run has no store)."""
    from dask.distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    job_f = client.scatter(job, broadcast=True, hash=False)
    pending = iter(todo)
    flight: dict = {}

    def submit() -> None:
        b = next(pending, None)
        if b is not None:
            f = client.submit(compute_shard, job_f, b, setup.inputs(b), setup.ds.y[setup.rows(b)], pure=False)
            flight[f] = b
            queue.add(f)

    queue = as_completed(loop=client.loop, with_results=True)   # results gathered as they come on this client's loop
    for _ in range(IN_FLIGHT_PER_WORKER * n_workers):
        submit()
    for f, (result, counted) in queue:          # a task that failed raises here; done batches stay
        b = flight.pop(f)
        f.release()
        _add_counts(setup.per_layer, counted)
        if result is not None and setup.writer is None:
            kept[b] = result
        elif result is not None:  # the worker could not see the store
            layers, clean, output, clean_out, outs = result
            setup.writer.write_batch(b, layers=layers, clean=clean, output=output, clean_output=clean_out,
                                     labels=setup.ds.y[setup.rows(b)], graph_outputs=outs)
        bar.update(1)
        submit()


def _counters(per_layer: list[Device], live: bool = False) -> list[dict | None]:
    """The devices' numeric counters (``stats``), one dict per layer (None for a layer sharing an earlier
    layer's device, or without counters): copies, or with ``live`` the devices' own dicts."""
    seen: set[int] = set()
    out: list[dict | None] = []
    for dev in per_layer:
        unit = getattr(dev, "hardware", dev)
        stats = getattr(unit, "stats", None)
        mine = isinstance(stats, dict) and id(unit) not in seen
        out.append(None if not mine else stats if live else
                   {k: v for k, v in stats.items() if isinstance(v, (int, float))})
        seen.add(id(unit))
    return out


def _add_counts(per_layer: list[Device], counted: list[dict | None]) -> None:
    """Add what a worker's devices counted for one batch to the client's programmed devices' counters,
    so that they end as a local run leaves them."""
    for own, theirs in zip(_counters(per_layer, live=True), counted):
        if own is not None and theirs is not None:
            for key, value in theirs.items():
                own[key] = own.get(key, 0) + value
