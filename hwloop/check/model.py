"""``check_model``: a model on the emulator under a profile, decided by the sequential gate.

Static effects (weight programming, gain/offset spread) are drawn once per
check from ``seed``: the claim is about one programmed chip.  Each look runs
fresh repeats on that chip (run keys carry the look, so no two looks share a
draw).  It also names the noisiest layer: per sample, the power ratio of the
clean layer output to its deviation over the repetitions (both averaged over
the layer's neurons), median over samples, in dB.

A look keeps only what the check needs of each batch (``LookPart``: the outputs and
per-sample noise and signal sums), computed where the batch ran: on Dask, only that
travels back from the workers, never every layer's values.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ContextManager, Sequence

import numpy as np

from ..data import Dataset, load_data
from ..devices.base import Device
from ..errors import HwloopError
from ..graph import Model, load_model
from ..profiles import Profile, load_profile
from .bars import Observations, classifier_observations, sample_error
from .gate import run_gate
from .result import CheckResult, LayerSNR
from .settings import Settings
from .stats import looks

_LOOK_TAG = 0xC4EC  # separates the run keys of a check's looks from those of a plain run


@dataclass(frozen=True)
class Target:
    """Where a model is checked: a device profile on the emulator.

    A hook for other targets (a bench file): anything with ``name``,
    ``sha256`` and ``devices(model) -> {layer index: Device}``.
    """

    name: str
    sha256: str
    profile: Profile

    def devices(self, model: Model) -> dict[int, Device]:
        from ..devices.emulator import emulators

        return emulators(self.profile, model.layers)


def resolve_target(spec) -> Target:
    """A ``Target`` from a profile (object, file or bare name) or a target itself."""
    if hasattr(spec, "devices"):
        return spec
    prof = spec if isinstance(spec, Profile) else load_profile(spec)
    return Target(prof.name, prof.sha256, prof)


class _Look(Device):
    """A device whose run keys carry the look: fresh noise per look on the same programmed chip."""

    def __init__(self, inner: Device, look: int):
        self.inner, self.look = inner, look
        self.remote = inner.remote

    @property
    def layer(self):
        return self.inner.layer

    @property
    def ideal(self) -> bool:
        return bool(getattr(self.inner, "ideal", False))

    @property
    def hardware(self) -> object:
        return self.inner.hardware

    def program(self, layer, *, seed: int = 0) -> None:
        self.inner.program(layer, seed=seed)

    def run(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray:
        return self.inner.run(x, repeats=repeats, key=(_LOOK_TAG, self.look, *key))

    def run_conv(self, x: np.ndarray, *, repeats: int, key: Sequence[int] = ()) -> np.ndarray | None:
        """The inner device's whole-Conv path (``hwloop.lowering.on_device``), with the same look keys as
        ``run``; None (the caller unfolds the rows for ``run``) when the inner device has none or declines."""
        direct = getattr(self.inner, "run_conv", None)
        return None if direct is None else direct(x, repeats=repeats, key=(_LOOK_TAG, self.look, *key))

    def takes_conv_whole(self, layer) -> bool:
        from ..lowering import takes_whole

        return takes_whole(self.inner, layer)

    def describe(self) -> dict:
        return self.inner.describe()


@dataclass
class LookPart:
    """What a check keeps of one batch of a look, or of a whole look (``join``); made by ``look_part``."""

    output: np.ndarray                   # (repeats, B, C)
    clean_output: np.ndarray             # (B, C)
    noise: list[np.ndarray]              # per layer (B,): sum over repeats of the mean over neurons of (y - clean)^2
    signal: list[np.ndarray]             # per layer (B,): mean over neurons of clean^2

    @classmethod
    def join(cls, parts: Sequence["LookPart"]) -> "LookPart":
        """The batches' parts (in order) as one part of all the samples."""
        def cat(arrays: list[np.ndarray], axis: int) -> np.ndarray:
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)

        return cls(cat([p.output for p in parts], 1), cat([p.clean_output for p in parts], 0),
                   [cat(list(a), 0) for a in zip(*(p.noise for p in parts))],
                   [cat(list(a), 0) for a in zip(*(p.signal for p in parts))])

    def accuracy(self, labels: np.ndarray) -> np.ndarray:
        """Accuracy per repeat, as a run computes it (``hwloop.result.Collected``)."""
        return (self.output.argmax(axis=2) == labels[None, :]).mean(axis=1)


def look_part(layers: list[np.ndarray], clean: list[np.ndarray], output: np.ndarray,
              clean_output: np.ndarray) -> LookPart:
    """One batch's ``LookPart`` from its run (``hwloop.runner.run_batch``): on a Dask worker, or here."""
    noise = [_noise_sum(y, c) for y, c in zip(layers, clean)]
    signal = [(np.asarray(c, np.float64) ** 2).mean(axis=1) for c in clean]
    return LookPart(np.ascontiguousarray(output), np.ascontiguousarray(clean_output), noise, signal)


def _noise_sum(y: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per sample: the sum over repeats of the mean over neurons of (y - clean)^2, in float64 (in place)."""
    d = np.array(y, np.float64)
    d -= clean[None]
    np.square(d, out=d)
    return d.mean(axis=2).sum(axis=0)


@dataclass
class _SNR:
    """Per-layer noise power per sample, accumulated over looks (see ``layer_snr_db``)."""

    noise: list[np.ndarray] = field(default_factory=list)
    signal: list[np.ndarray] = field(default_factory=list)
    repeats: int = 0
    clipped: dict[int, list[int]] = field(default_factory=dict)

    def add(self, part: LookPart, devices: dict) -> None:
        for k, (noise, signal) in enumerate(zip(part.noise, part.signal)):
            if len(self.noise) <= k:
                self.noise.append(noise.copy())
                self.signal.append(signal)
            else:
                self.noise[k] += noise
        self.repeats += part.output.shape[0]
        for k, dev in devices.items():
            st = getattr(dev, "stats", {})
            acc = self.clipped.setdefault(k, [0, 0])
            acc[0] += st.get("dac_clipped", 0) + st.get("adc_clipped", 0)
            acc[1] += st.get("dac_values", 0) + st.get("adc_values", 0)

    def layers(self, model: Model) -> list[LayerSNR]:
        out = []
        for L, noise, signal in zip(model.layers, self.noise, self.signal):
            clip = self.clipped.get(L.index, [0, 0])
            out.append(LayerSNR(L.index, L.name, _median_db(signal, noise / self.repeats),
                                clip[0] / clip[1] if clip[1] else 0.0))
        return out


def layer_snr_db(y: np.ndarray, clean: np.ndarray) -> float:
    """Median over samples of 10 log10(mean clean^2 / mean (y - clean)^2), means over neurons (and repeats).

    y (repeat, sample, neuron), clean (sample, neuron).  inf when nothing deviates.
    """
    noise = ((np.asarray(y, np.float64) - clean[None]) ** 2).mean(axis=(0, 2))
    return _median_db((np.asarray(clean, np.float64) ** 2).mean(axis=1), noise)


def _median_db(signal: np.ndarray, noise: np.ndarray) -> float:
    if not np.any(noise > 0):
        return math.inf
    with np.errstate(divide="ignore"):
        snr = 10 * np.log10(signal / np.where(noise > 0, noise, np.nan))
    return float(np.median(np.where(noise > 0, snr, np.inf)))


def regression_targets(data, ds: Dataset) -> np.ndarray:
    """Float targets for --metric rmse/mae: an ``npz:PATH`` spec's ``y`` as stored (Dataset casts to int)."""
    if isinstance(data, str) and data.strip().startswith("npz:"):
        path = data.strip()[4:].split("@")[0]
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["y"], dtype=np.float64)[:len(ds)]
    if isinstance(data, Dataset):
        return np.asarray(ds.y, dtype=np.float64)
    raise HwloopError(f"data {data!r}: a regressor's float targets come from an npz:PATH data set (arrays x, y)")


def check_model(model: Model | str | os.PathLike, *, profile, settings: Settings | None = None,
                data: Dataset | str | None = None, workers: int | None = None, scheduler: str | None = None,
                **options) -> CheckResult:
    """Check ``model`` under ``profile`` (or another target) against the bars, sequentially.

    ``settings``: a ``Settings``; or the same as flat keywords in ``options``
    (``max_drop=0.02, max_repeats=50, bars=Bars(...)``, see ``Settings.of``).
    ``data``: a ``Dataset`` or a spec (default: ``settings.data``).  With
    ``settings.repeats`` one look at exactly that many repeats, otherwise looks at
    4, 8, 16, ... up to ``max_repeats``, stopping at the first decision.  The
    result's ``decision`` is pass, fail or undecided.  ``workers`` (a local Dask cluster of N
    processes) or ``scheduler`` (tcp://HOST:PORT): each look's batches are computed on Dask
    (``hwloop.distributed``), one client for all looks; the same numbers as in this process.
    """
    if settings is not None and options:
        raise HwloopError(f"check_model: give settings=Settings(...) or keywords, not both ({', '.join(options)})")
    if settings is None:
        settings = Settings.of(**options, **({"data": data} if isinstance(data, str) else {}))
    s, data = settings, settings.data if data is None else data
    schedule = looks(s.repeats, sequential=False) if s.repeats is not None else looks(s.max_repeats)
    m = model if isinstance(model, Model) else load_model(model)
    target = resolve_target(profile)
    ds = data if isinstance(data, Dataset) else load_data(data)
    from ..randomness import compute_device
    from ..run_devices import on_compute_device

    compute_device(s.device)                      # a device torch cannot use: one line before any work
    snr, seen = _SNR(), {"acc": []}
    obs = _observations(m, ds, data, s.bars.metric, s.seed, s.batch_size)
    with _client(workers, scheduler) as client:

        def draw(look: int, r: int) -> np.ndarray:
            devices = target.devices(m)
            if s.device is not None:              # emulators computing on it (a chip stays where it is)
                devices = dict(zip(devices, on_compute_device(list(devices.values()), s.device)))
            part = _run_look(m, ds, {k: _Look(d, look) for k, d in devices.items()}, r, s, client)
            snr.add(part, devices)
            seen.setdefault("clean", part.clean_output)
            seen["acc"].append(np.asarray(part.accuracy(ds.y), np.float64))
            return part.output

        outcome = run_gate(draw, obs, s.bars, scope=s.scope, confidence=s.confidence, schedule=schedule)
    return CheckResult(model=str(m.path), profile=target.name, profile_sha256=target.sha256,
                       data=data if isinstance(data, str) else ds.name, repeats=outcome.repeats, seed=s.seed,
                       decision=outcome.decision, bars=outcome.bars, scope=s.scope, confidence=s.confidence,
                       max_repeats=schedule[-1], accuracy=np.concatenate(seen["acc"]),
                       clean_accuracy=float((seen["clean"].argmax(axis=1) == ds.y).mean()),
                       layers=snr.layers(m))


def _client(workers: int | None, scheduler: str | None) -> ContextManager:
    """One Dask client for every look of a check (``hwloop.cluster.dask_client``); none without Dask."""
    from ..cluster import check_workers, dask_client

    check_workers(workers)
    if not (workers or scheduler):
        return nullcontext()
    return dask_client(scheduler, workers)


def _run_look(m: Model, ds: Dataset, devices: dict, repeats: int, s: Settings, client) -> LookPart:
    """One look's run, kept as its ``LookPart``: in this process, or its batches sharded over ``client``'s
    Dask workers, each worker reducing its batches (``look_part``) so that only that travels back."""
    if client is not None:
        from ..distributed import summarise_sharded

        return LookPart.join(summarise_sharded(m, ds, look_part, devices=devices, repeats=repeats, seed=s.seed,
                                               batch_size=s.batch_size, client=client))
    from ..runner import run_model

    res = run_model(m, ds, devices=devices, repeats=repeats, seed=s.seed, batch_size=s.batch_size)
    bs = int(res.attrs["batch_size"])        # the same batches as on the workers: the same sums, bit for bit
    return LookPart.join([look_part([y[:, i:i + bs] for y in res.layers], [c[i:i + bs] for c in res.clean_layers],
                                    res.output[:, i:i + bs], res.clean_output[i:i + bs])
                          for i in range(0, len(ds), bs)])


def _observations(m: Model, ds: Dataset, data, metric: str, seed: int, batch_size: int | None) -> Observations:
    """The noise-free reference: predicted classes, or per-sample errors of a regressor."""
    from ..runner import run_model

    clean = run_model(m, ds, devices=None, repeats=1, seed=seed, batch_size=batch_size).output[0]
    if metric == "accuracy":
        return classifier_observations(ds.y, clean)
    targets = regression_targets(data, ds)
    return Observations(targets, sample_error(clean, targets, metric))
