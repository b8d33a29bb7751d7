"""Walking Noise sweeps: points (site, sigma, repeat), run locally or on Dask, into a Zarr store.

Every point is a task whose numbers depend only on the settings and its own
key (seed, site, sigma index, repeat), never on execution order or worker
(``points``).  Tasks return their results to the client, the only writer: each
point lands in its own Zarr chunk (written atomically) as soon as it finishes,
``accuracy`` last, so a NaN accuracy means "not done" and a resumed sweep
computes exactly the missing points (``sweep_store``).

Evaluation-only sweeps run an ONNX model (``SiteModel``, clean prefix reused).
Noisy-training sweeps (``train_noise``) train a torch model per point from a
model definition, after one clean model per repeat whose checkpoint (kept in
the store) also gives the evaluation-only accuracy of the same point.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import HwloopError
from ..files import store_lock
from ..inputs import labels_in_range, require_memory
from .points import EvalJob, TrainJob, clean_point, eval_point, point_seed, train_point, train_spec
from .sites import KINDS, Noise
from .sweep_store import SweepStore, open_sweep, sigma_attrs

__all__ = ["MODES", "SweepSettings", "parse_sigmas", "run_sweep", "open_sweep", "SweepStore", "sigma_attrs",
           "EvalJob", "TrainJob", "eval_point", "clean_point", "train_point", "point_seed", "train_spec"]

MODES = ("walk", "global")


#: memory per sigma of a grid (numpy, Python float, JSON in the store's attributes) and per point of a sweep
_BYTES_PER_SIGMA = 100
_BYTES_PER_POINT = 250


def parse_sigmas(text: str) -> tuple[float, ...]:
    """``logspace:1e-2:1e8:41``, ``linspace:0:6:13`` or a comma list ``0.1,1,10``."""
    t = text.strip()
    try:
        if t.startswith(("logspace:", "linspace:")):
            kind, a, b, n = t.split(":")
            a, b, n = float(a), float(b), int(n)
            if n < 1:
                raise ValueError
            require_memory(n * _BYTES_PER_SIGMA, f"sigmas {text!r}: a grid of {n} values", "use fewer points")
            if kind == "logspace":
                if a <= 0 or b <= 0:
                    raise HwloopError(f"sigmas {text!r}: logspace bounds must be > 0")
                vals = np.logspace(np.log10(a), np.log10(b), n)
            else:
                vals = np.linspace(a, b, n)
        else:
            vals = np.array([float(v) for v in t.split(",")])
    except ValueError:
        raise HwloopError(f"sigmas {text!r}: expected logspace:A:B:N, linspace:A:B:N or a comma list") from None
    if len(vals) == 0 or np.any(~np.isfinite(vals)) or np.any(vals < 0):
        raise HwloopError(f"sigmas {text!r}: need finite values >= 0")
    return tuple(float(v) for v in vals)


@dataclass(frozen=True)
class SweepSettings:
    """Everything that determines a sweep's numbers (compared on resume)."""

    sigmas: tuple[float, ...]
    noise: str = "additive"
    mode: str = "walk"
    data: str = "digits"
    repeats: int = 1
    seed: int = 0
    ratio: float = 0.5
    correlated: bool = False
    train_noise: bool = False
    model_def: str | None = None      # train_noise: exporters model name or module:factory
    train_data: str | None = None     # train_noise: default the training split of ``data``
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    clamp: float | None = None
    sites: tuple[int, ...] | None = None   # walk only these site indices (default: all)

    def __post_init__(self) -> None:
        if self.noise not in KINDS:
            raise HwloopError(f"--noise {self.noise!r}: not one of {', '.join(KINDS)}")
        if self.mode not in MODES:
            raise HwloopError(f"--mode {self.mode!r}: not one of {', '.join(MODES)}")
        if self.repeats < 1:
            raise HwloopError(f"--repeats {self.repeats}: must be >= 1")
        if self.train_noise and not self.model_def:
            raise HwloopError("noisy training needs a model definition (--model-def tfc|mlp|... or module:factory)")
        if self.train_noise and self.epochs < 1:
            raise HwloopError(f"--epochs {self.epochs}: must be >= 1")
        if self.clamp is not None and not self.clamp > 0:
            raise HwloopError(f"--clamp {self.clamp}: must be > 0")
        Noise(self.noise, 0.0, self.ratio, self.correlated)  # validates ratio
        if self.sites is not None and self.mode == "global":
            raise HwloopError("--sites selects sites to walk; global mode puts noise at every site")

    def walk_sites(self, n_sites: int) -> list[int]:
        """The site indices a walking sweep visits ([0] stands for "all" in global mode)."""
        if self.mode == "global":
            return [0]
        if self.sites is None:
            return list(range(n_sites))
        bad = [k for k in self.sites if not 0 <= k < n_sites]
        if len(set(self.sites)) != len(self.sites):
            raise HwloopError(f"--sites {','.join(map(str, self.sites))}: a site is listed twice")
        if bad:
            raise HwloopError(f"--sites: site {bad[0]} does not exist (the model has sites 0..{n_sites - 1})")
        return list(self.sites)

    def noise_at(self, site: int, sigma: float, n_sites: int) -> dict[int, Noise]:
        """Noise per site index for one point: one site ("walk") or all ("global")."""
        n = Noise(self.noise, sigma, self.ratio, self.correlated)
        return {k: n for k in range(n_sites)} if self.mode == "global" else {site: n}


# -- the store -------------------------------------------------------------------------------
# -- running ---------------------------------------------------------------------------------
def _provenance() -> dict:
    from ..provenance import session

    return session()


def _prepare(settings: SweepSettings, model: str | os.PathLike | None, bench: str | os.PathLike | None = None):
    """The job, its sites, and the attributes of a new store."""
    if bench is not None:
        return _prepare_hardware(settings, model, bench)
    if settings.train_noise:
        if model is not None:
            raise HwloopError(f"{model}: noisy training builds its model from --model-def; "
                              "give an ONNX model only for evaluation-only sweeps")
        from .diagnostics import weight_layers
        from .train import state_vector

        job = TrainJob(settings)
        net = job.net(0)
        attrs = {"n_classes": job.data()[1].n_classes, "n_eval_samples": len(job.data()[1].y),
                 "n_state": len(state_vector(net)),
                 "model_def": settings.model_def}
        return job, net.sites, attrs, [n for n, _ in weight_layers(net.net)], None
    if model is None:
        raise HwloopError("an evaluation-only sweep needs an ONNX model (or --train-noise with --model-def)")
    path = Path(model)
    if not path.exists():
        raise HwloopError(f"{path}: no such file")
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    job = EvalJob(settings, raw, sha)
    sm, data, cache = job.evaluator()
    from .evaluate import accuracy

    n_out = cache[sm.output].reshape(len(data.y), -1).shape[1]
    if n_out > 1:               # a classifier's outputs: labels must name one
        labels_in_range(data.y, n_out, data.name, path)

    attrs = {"n_classes": data.n_classes, "n_eval_samples": len(data.y), "model": str(path), "model_sha256": sha,
             "clean_accuracy": accuracy(cache[sm.output], data.y)}
    return job, sm.sites, attrs, None, sha


def _prepare_hardware(settings: SweepSettings, model, bench):
    """``_prepare`` for a walk with the bench file's layers on their hardware (``hardware.HardwareJob``)."""
    from .hardware import HardwareJob
    from .sites import load_onnx, onnx_sites

    if settings.train_noise or model is None or not Path(model).exists():
        raise HwloopError("a walk with --bench is evaluation-only on an existing ONNX model")
    job = HardwareJob.create(settings, model, bench)
    _, data, _, _ = job.open()
    attrs = {"n_classes": data.n_classes, "n_eval_samples": len(data.y), "model": str(model),
             "model_sha256": job.sha256, "bench": str(bench),
             "clean_accuracy": job.clean_accuracy()}
    return job, onnx_sites(load_onnx(model)), attrs, None, job.sha256


def run_sweep(settings: SweepSettings, out: str | os.PathLike, model: str | os.PathLike | None = None, *,
              scheduler: str | None = None, workers: int | None = None,
              progress: Callable[[int, int], None] | None = None,
              bench: str | os.PathLike | None = None) -> Path:
    """Run (or resume) a sweep into ``out``; ``scheduler``/``workers`` put the points on Dask.

    ``workers`` alone starts a local Dask cluster of that many single-threaded
    processes; ``scheduler`` (``tcp://HOST:PORT``) uses an existing one;
    neither runs every point in this process.  ``out`` is written under its writer's lock
    (``hwloop.files.store_lock``).
    """
    out = Path(out)
    if bench is not None and (scheduler or workers):
        raise HwloopError("a walk with --bench runs in this process (hardware is not shipped to Dask workers)")
    with store_lock(out):
        return _run_sweep(settings, out, model, scheduler, workers, progress, bench)


def _run_sweep(settings: SweepSettings, out: Path, model, scheduler, workers, progress, bench) -> Path:
    job, sites, attrs, layers, sha = _prepare(settings, model, bench)
    settings = job.settings                 # a walk with --bench and no --sites: the sites it can walk
    n_walk = 1 if settings.mode == "global" else len(settings.walk_sites(len(sites)))
    points = n_walk * len(settings.sigmas) * settings.repeats
    width = 1 + (2 + len(layers or ()) + len(sites) if settings.train_noise else 0)
    require_memory(points * (_BYTES_PER_POINT + 16 * width), f"a sweep of {points} points",
                   "use fewer sigmas, sites or --repeats")
    attrs["sites"] = [{"index": x.index, "name": x.name, "op": x.op, "shape": list(x.shape)} for x in sites]
    if out.exists():
        store = SweepStore(out)
        store.check(settings, sha)
    else:
        store = SweepStore.create(out, settings, sites, {**attrs, "provenance": _provenance()}, layers)
    try:
        if scheduler or workers:
            _run_dask(job, store, scheduler, workers, progress)
        else:
            _run_local(job, store, progress)
    finally:
        getattr(job, "close", lambda: None)()          # a walk with --bench: release the hardware
    store.finish()
    return out


def _tasks(job, store: SweepStore) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Missing clean repeats, and missing points as (store position, site index, sigma index, repeat)."""
    clean = [ix[0] for ix in store.missing("clean_accuracy")] if isinstance(job, TrainJob) else []
    sites = store.root["site"][...]
    return clean, [(i, int(sites[i]), j, r) for i, j, r in store.missing()]


def _run_local(job, store: SweepStore, progress) -> None:
    clean, points = _tasks(job, store)
    total, done = len(clean) + len(points), 0
    for r in clean:
        store.write(clean_point(job, r))
        done += 1
        progress and progress(done, total)
    for i, site, j, r in points:
        if isinstance(job, TrainJob):
            result = train_point(job, site, j, r, store.root["clean_state"][r])
        elif hasattr(job, "point"):                   # hardware.HardwareJob
            result = job.point(site, j, r)
        else:
            result = eval_point(job, site, j, r)
        store.write(result, (i, j, r))
        done += 1
        progress and progress(done, total)


def _run_dask(job, store: SweepStore, scheduler: str | None, workers: int | None, progress) -> None:
    from dask.distributed import as_completed

    from ..cluster import dask_client

    clean, points = _tasks(job, store)
    total = len(clean) + len(points)
    if total == 0:
        return
    with dask_client(scheduler, workers) as client:
        job_f = client.scatter(job, broadcast=True)
        done = 0

        def collect(futures: dict) -> None:
            nonlocal done
            for f in as_completed(list(futures)):
                store.write(f.result(), futures[f])   # a failed task raises here; finished points stay
                done += 1
                progress and progress(done, total)

        # clean models first: points then carry no preference for the worker that trained them
        collect({client.submit(clean_point, job_f, r, pure=False): None for r in clean})
        states = {}
        if isinstance(job, TrainJob):
            for r in sorted({p[3] for p in points}):
                states[r] = client.scatter(store.root["clean_state"][r], broadcast=True)
        futures = {}
        for i, site, j, r in points:
            if isinstance(job, TrainJob):
                f = client.submit(train_point, job_f, site, j, r, states[r], pure=False)
            else:
                f = client.submit(eval_point, job_f, site, j, r, pure=False)
            futures[f] = (i, j, r)
        collect(futures)

