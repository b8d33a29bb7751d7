"""Walking Noise sweeps: points (site, sigma, repeat), run locally or on Dask, into a Zarr store.

Every point is a task whose numbers depend only on the settings and its own
key (seed, site, sigma index, repeat), never on execution order or worker.
Tasks return their results to the client, the only writer: each point lands in
its own Zarr chunk (written atomically) as soon as it finishes, ``accuracy``
last, so a NaN accuracy means "not done" and a resumed sweep computes exactly
the missing points.

Evaluation-only sweeps run an ONNX model (``SiteModel``, clean prefix reused).
Noisy-training sweeps (``train_noise``) train a torch model per point from a
model definition, after one clean model per repeat whose checkpoint (kept in
the store) also gives the evaluation-only accuracy of the same point.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..cf import SWEEP, annotate, decode_attrs, store_attrs
from ..data import Dataset, load_data
from ..errors import HwloopError
from ..files import atomic_dir, restore_for_reading, store_lock
from ..inputs import labels_in_range, require_memory
from .sites import KINDS, Noise, Site

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


def train_spec(spec: str) -> str:
    """The training split of a data spec (``digits@500`` -> ``digits+train@500``)."""
    if "+train" in spec:
        return spec
    m = re.match(r"^(.*?)(@\d+)?$", spec)
    return f"{m[1]}+train{m[2] or ''}"


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


def point_seed(*key: int) -> int:
    """A 63-bit seed from a key of non-negative integers (order-independent of execution)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# -- the work of one point: plain functions of (job, key) so any process can run them ----------
_CACHE: dict[str, Any] = {}


def _cached(key: str, build: Callable[[], Any]) -> Any:
    """One object per process and key (the clean activations of a model, a data set)."""
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = build()
    return _CACHE[key]


@dataclass(frozen=True)
class EvalJob:
    """Evaluation-only points on an ONNX model (given as bytes, so remote workers need no file)."""

    settings: SweepSettings
    model: bytes
    sha256: str

    def evaluator(self):
        import onnx

        from .evaluate import SiteModel

        def build():
            model = SiteModel(onnx.load_from_string(self.model))
            data = load_data(self.settings.data)
            return model, data, model.clean(data.x)
        return _cached(f"eval:{self.sha256}:{self.settings.data}", build)


def eval_point(job: EvalJob, site: int, sigma_index: int, repeat: int) -> dict:
    """Accuracy of the ONNX model with noise at ``site`` (all sites in global mode)."""
    from .evaluate import accuracy

    model, data, cache = job.evaluator()
    s = job.settings
    rng = np.random.default_rng([s.seed, site, sigma_index, repeat])
    logits = model.run(s.noise_at(site, s.sigmas[sigma_index], len(model.sites)), rng, cache=cache)
    return {"accuracy": accuracy(logits, data.y)}


@dataclass(frozen=True)
class TrainJob:
    """Noisy-training points of a torch model definition."""

    settings: SweepSettings

    def data(self) -> tuple[Dataset, Dataset]:
        s = self.settings
        return _cached(f"data:{s.data}:{s.train_data}",
                       lambda: (load_data(s.train_data or train_spec(s.data)), load_data(s.data)))

    def net(self, repeat: int):
        """A fresh model for ``repeat``: the same initial weights for every point of that repeat."""
        from .train import NoisyNet, build_model

        train, test = self.data()
        s = self.settings
        module, in_shape = build_model(s.model_def, train.x.shape[1], test.n_classes, point_seed(s.seed, repeat))
        return NoisyNet(module, in_shape)

    def warm_up(self) -> None:
        """Pay this process's one-time costs (imports, data loading, torch's first optimiser
        step, several seconds) before timing anything."""
        from .train import TrainConfig, train

        train(self.net(0), self.data()[0].head(256), TrainConfig(epochs=1), 0, 0)

    def config(self):
        from .train import TrainConfig

        s = self.settings
        return TrainConfig(epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, clamp=s.clamp)


def _diagnose(net, test: Dataset, seed: int) -> dict:
    from .diagnostics import binarization, weight_magnitude
    from .train import evaluate

    _, acts = evaluate(net, test, {}, seed, capture=True)
    return {"weight_mag": weight_magnitude(net),
            "binarization": np.array([binarization(acts[k]) for k in sorted(acts)])}


def clean_point(job: TrainJob, repeat: int) -> dict:
    """Train the clean model of ``repeat`` (no noise): its checkpoint, accuracy and diagnostics."""
    from .train import evaluate, state_vector, train

    train_data, test = job.data()
    s = job.settings
    net = job.net(repeat)
    train(net, train_data, job.config(), point_seed(s.seed, repeat, 1), point_seed(s.seed, repeat, 2))
    acc, _ = evaluate(net, test, {}, 0)
    return {"repeat": repeat, "clean_state": state_vector(net), "clean_accuracy": acc,
            **{f"clean_{k}": v for k, v in _diagnose(net, test, 0).items()}}


def train_point(job: TrainJob, site: int, sigma_index: int, repeat: int, clean_state: np.ndarray) -> dict:
    """One point: the clean checkpoint under noise (evaluation only), then a model trained with it."""
    from .train import evaluate, load_state_vector, train

    train_data, test = job.data()
    s = job.settings
    net = job.net(repeat)
    noise_at = s.noise_at(site, s.sigmas[sigma_index], len(net.sites))
    eval_seed = point_seed(s.seed, site, sigma_index, repeat, 0)
    load_state_vector(net, clean_state)
    acc_eval_only, _ = evaluate(net, test, noise_at, eval_seed)
    net = job.net(repeat)
    net.noise_at = noise_at
    train(net, train_data, job.config(), point_seed(s.seed, repeat, 1),
          point_seed(s.seed, site, sigma_index, repeat, 1))
    acc, _ = evaluate(net, test, noise_at, eval_seed)
    net.noise_at = {}
    return {"accuracy_eval_only": acc_eval_only,
            **_diagnose(net, test, 0), "accuracy": acc}


# -- the store -------------------------------------------------------------------------------
def _settings_json(settings: SweepSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


#: manifest: the arrays every sweep store has, and those of noisy-training sweeps
_ARRAYS = ("accuracy",)
_TRAIN_ARRAYS = ("accuracy_eval_only", "weight_mag", "binarization", "clean_accuracy", "clean_weight_mag",
                 "clean_binarization", "clean_state")


def _check_manifest(path: Path, attrs: dict, present) -> None:
    """HwloopError unless ``attrs`` are a sweep's and every array it needs is ``present``."""
    settings = attrs.get("settings")
    if not isinstance(settings, dict):
        what = "a run store" if "hwloop" in attrs or "n_samples" in attrs else "not made by hwloop walk"
        raise HwloopError(f"{path}: not a sweep store ({what})")
    need = _ARRAYS + (_TRAIN_ARRAYS if settings.get("train_noise") else ())
    missing = [k for k in need if k not in present]
    if missing:
        raise HwloopError(f"{path}: damaged sweep store: array(s) {', '.join(missing)} missing")


class SweepStore:
    """The sweep's Zarr store; the client is its only writer (under ``store_lock``)."""

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        try:
            self.group = zarr.open_group(str(self.path), mode="r+")
            self.attrs = decode_attrs(self.group.attrs)
            present = set(self.group.array_keys())
        except Exception as e:
            raise HwloopError(f"{self.path}: not a sweep store ({e})") from None
        _check_manifest(self.path, self.attrs, present)
        self.settings = self.attrs["settings"]
        self._arrays: dict = {}

    @classmethod
    def create(cls, path: Path, settings: SweepSettings, sites: list[Site], attrs: dict,
               layers: list[str] | None = None) -> "SweepStore":
        """Write an empty store beside ``path`` and rename it into place (never half-made)."""
        import xarray as xr

        s = settings
        walk = s.walk_sites(len(sites))
        names = ["global"] if s.mode == "global" else [sites[k].name for k in walk]
        n, m, r = len(names), len(s.sigmas), s.repeats
        coords = {"site": np.array(walk), "site_name": ("site", np.array(names, dtype=object)),
                  "sigma": np.array(s.sigmas), "repeat": np.arange(r)}
        nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
        cell = ("site", "sigma", "repeat")
        data: dict[str, tuple] = {"accuracy": (cell, nan(n, m, r))}
        enc: dict[str, dict] = {"accuracy": {"chunks": (1, 1, 1)}}
        if s.train_noise:
            coords["layer"] = np.array(layers, dtype=object)
            coords["probe"] = np.array([x.name for x in sites], dtype=object)
            L, P = len(layers), len(sites)
            data |= {"accuracy_eval_only": (cell, nan(n, m, r)),
                     "weight_mag": (cell + ("layer",), nan(n, m, r, L)),
                     "binarization": (cell + ("probe",), nan(n, m, r, P)),
                     "clean_accuracy": (("repeat",), nan(r)),
                     "clean_weight_mag": (("repeat", "layer"), nan(r, L)),
                     "clean_binarization": (("repeat", "probe"), nan(r, P)),
                     "clean_state": (("repeat", "param"), nan(r, int(attrs["n_state"])))}
            enc |= {"accuracy_eval_only": {"chunks": (1, 1, 1)}, "weight_mag": {"chunks": (1, 1, 1, L)},
                    "binarization": {"chunks": (1, 1, 1, P)}, "clean_accuracy": {"chunks": (1,)},
                    "clean_weight_mag": {"chunks": (1, L)}, "clean_binarization": {"chunks": (1, P)},
                    "clean_state": {"chunks": (1, int(attrs["n_state"]))}}
        ds = xr.Dataset(data, coords=coords, attrs=store_attrs({**attrs, "settings": _settings_json(s), "complete": 0}))
        annotate(ds, SWEEP, {"sigma": sigma_attrs(s.noise)})
        with atomic_dir(path, overwrite=False) as tmp:
            ds.to_zarr(str(tmp), mode="w", encoding=enc, consolidated=False)
        return cls(path)

    def check(self, settings: SweepSettings, sha256: str | None) -> None:
        """Refuse to resume a store made with other settings (names the first differing key)."""
        want = _settings_json(settings)
        for k in sorted(set(want) | set(self.settings)):
            if want.get(k) != self.settings.get(k):
                raise HwloopError(f"{self.path}: made with {k}={self.settings.get(k)!r}, not {want.get(k)!r}; "
                                  "use another --out or the same settings to resume")
        if sha256 and self.attrs.get("model_sha256") != sha256:
            raise HwloopError(f"{self.path}: made from another model (sha256 {self.attrs.get('model_sha256')})")

    def missing(self, name: str = "accuracy") -> list[tuple[int, ...]]:
        """Indices of points not yet written."""
        return [tuple(int(i) for i in ix) for ix in np.argwhere(np.isnan(self.group[name][...]))]

    def write(self, result: dict, index: tuple[int, int, int] | None = None) -> None:
        """Write one finished point at store ``index``; ``accuracy`` (the done-marker) last."""
        if index is None:
            ix, keys = (result["repeat"],), ["clean_state", "clean_weight_mag", "clean_binarization", "clean_accuracy"]
        else:
            ix = index
            keys = [k for k in result if k != "accuracy"] + ["accuracy"]
        for k in keys:
            self._array(k)[ix] = result[k]

    def _array(self, name: str):
        """Array handles opened once (each open reads its metadata)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def finish(self) -> None:
        if not self.missing() and ("clean_accuracy" not in self.group or not self.missing("clean_accuracy")):
            self.group.attrs["complete"] = 1


def open_sweep(path: str | os.PathLike):
    """The sweep as an ``xarray.Dataset`` (dims site, sigma, repeat); unfinished points are NaN.

    Its attrs are the flat, netCDF-ready form (``hwloop.cf``; an older store's nested ones are flattened),
    so ``to_netcdf`` works on it; ``hwloop.cf.decode_attrs(ds.attrs)`` gives ``settings``, ``sites`` as dicts.
    """
    import xarray as xr

    restore_for_reading(path)
    if not Path(path).exists():
        raise HwloopError(f"{path}: no such sweep store")
    try:
        ds = xr.open_zarr(str(path), consolidated=False)
    except Exception as e:
        raise HwloopError(f"{path}: not a sweep store ({e})") from None
    attrs = decode_attrs(ds.attrs)
    _check_manifest(Path(path), attrs, set(ds.data_vars))
    ds.attrs = store_attrs(attrs)
    try:
        return ds.load()
    except Exception as e:
        raise HwloopError(f"{path}: damaged sweep store: {e}") from None


def sigma_attrs(noise: str) -> dict[str, str]:
    """What the sweep's ``sigma`` coordinate means for a noise kind (a standard deviation, not a variance)."""
    what = {"additive": ("standard deviation s of additive noise x + N(0, s^2)", "a.u."),
            "multiplicative": ("standard deviation s of multiplicative noise x * N(1, s^2)", "1"),
            "combined": ("amplitude A of combined noise (s_add = A r, s_mul = A (1 - r))", "1")}
    long_name, units = what.get(noise, ("noise level", "1"))
    return {"long_name": f"Walking Noise strength: {long_name}", "units": units}


# -- running ---------------------------------------------------------------------------------
def _provenance() -> dict:
    from .. import __version__

    # versions of what the sweep used (already imported), without importing anything for it
    used = {m: getattr(sys.modules[m], "__version__", "?") for m in ("onnx", "onnxruntime", "torch", "zarr")
            if m in sys.modules}
    return {"hwloop": __version__, "numpy": np.__version__, **used,
            "python": sys.version.split()[0], "command": " ".join(sys.argv),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


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
        attrs = {"n_classes": job.data()[1].n_classes, "n_state": len(state_vector(net)),
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

    attrs = {"n_classes": data.n_classes, "model": str(path), "model_sha256": sha,
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
    attrs = {"n_classes": data.n_classes, "model": str(model), "model_sha256": job.sha256, "bench": str(bench),
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
    sites = store.group["site"][...]
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
            result = train_point(job, site, j, r, store.group["clean_state"][r])
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
                states[r] = client.scatter(store.group["clean_state"][r], broadcast=True)
        futures = {}
        for i, site, j, r in points:
            if isinstance(job, TrainJob):
                f = client.submit(train_point, job_f, site, j, r, states[r], pure=False)
            else:
                f = client.submit(eval_point, job_f, site, j, r, pure=False)
            futures[f] = (i, j, r)
        collect(futures)

