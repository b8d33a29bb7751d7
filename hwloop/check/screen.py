"""Per-sample class probabilities under a profile, without sampling: what ``--analytic`` decides from.

Two parts, because a chip has two kinds of error:

- **Static errors** (weight quantisation and programming error, gain/offset
  spread, input DAC, transfer function) are fixed once a chip is programmed.
  Sampling checks *one* programmed chip, drawn from the seed; the screen
  programs the very same chip (same seed, same draws) and runs it once with
  every fresh noise source off.  Its last analog layer's outputs are the
  means of the logits: the static errors enter exactly, not approximately.
- **Fresh noise** (neuron noise, read noise, hidden ADC steps, clipping) is
  drawn anew at every inference.  ``hwloop.analysis.predict`` gives its
  first-order covariance, at the nominal weights.  A noise-free layer of all
  pairwise differences z_j - z_k, appended after the last analog layer, makes
  it give Var(z_j - z_k) besides Var(z_j): the full covariance of the logits.

The logits are taken Gaussian before the last layer's ADC.  The probability
that each class wins: in closed form (the normal CDF of margin / sd) for a
sample with one close rival and no ADC on the last layer; otherwise from a
fixed set of quasi-random normal points (scrambled Sobol, common to all
samples, so deterministic) passed through that ADC as the chip applies it
(clip and round; equal values go to the first class, as argmax does).
Samples no rival can reach (``_SURE`` standard deviations, ADC steps and
ties at its ends considered) keep their class with certainty.  Drift
(time-dependent) is left out and named.  The result is cached in memory and,
given a folder, on disk (npz, no pickles) under (model, profile, data, seed,
version): changing a bar or the confidence then costs only the decision.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
import dataclasses
import hashlib
import json
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import numpy as np

from ..data import Dataset
from ..layer import AnalogLayer
from ..profiles import Converter, Profile, ideal_profile
from .settings import data_sha256, write_entry

_DRAWS = 1024
_SURE = 4.5
_FORMAT = 4          # bump when the probabilities change for the same inputs (cache key)
_MEMORY = 16         # screens kept in this process

#: profile entries drawn anew at every inference; the static pass runs with them off (ADC: range kept, no steps)
_FRESH = {"noise": {"D_A": 0.0, "D_M": 0.0, "D_AC": 0.0, "D_MC": 0.0, "dither": 0.0, "shot": 0.0},
          "weights": {"read_noise": 0.0}, "adc": {"bits": None}, "drift": {"gain": 0.0, "offset": 0.0}}
_NO_ADC = {"bits": None, "range": None}


@dataclasses.dataclass(frozen=True)
class Screen:
    """probs (n, k): P(class k wins) per sample; clean (n,): the noise-free model's class; not_modelled."""

    probs: np.ndarray
    clean: np.ndarray
    not_modelled: str = ""


_memory: dict[str, Screen] = {}
_derived: dict[str, Profile] = {}     # derived profiles, by (profile, change, layer)


def screen(model, profile: Profile, ds: Dataset, seed: int, cache: Path | None = None) -> Screen:
    """The screen of ``model`` under ``profile`` on ``ds``: from memory, from ``cache``, or computed (and kept)."""
    key = _key(model, profile, ds, seed)
    hit = _memory.get(key)
    stored = hit is not None and cache is not None and (cache / f"{key}.npz").is_file()
    if hit is None:
        hit = _load(cache, key)
        stored = hit is not None
    if hit is None:
        hit = _compute(model, profile, ds, seed)
    if not stored:
        _save(cache, key, hit)
    if key not in _memory:
        while len(_memory) >= _MEMORY:
            _memory.pop(next(iter(_memory)))
        _memory[key] = hit
    return hit


def forget() -> None:
    """Drop the screens kept in this process (a benchmark's cold start; the disk cache stays)."""
    _memory.clear()


def _key(model, profile: Profile, ds: Dataset, seed: int) -> str:
    from .. import __version__

    blob = json.dumps([getattr(model, "sha256", str(model.path)), profile.sha256, data_sha256(ds), int(seed),
                       _FORMAT, __version__])
    return hashlib.sha256(blob.encode()).hexdigest()


def _load(cache: Path | None, key: str) -> Screen | None:
    path = None if cache is None else cache / f"{key}.npz"
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return Screen(f["probs"], f["clean"], str(f["not_modelled"]))
    except (OSError, ValueError, KeyError):
        return None        # a damaged entry is recomputed and replaced


def _save(cache: Path | None, key: str, s: Screen) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, probs=s.probs, clean=s.clean, not_modelled=np.str_(s.not_modelled))

    write_entry(cache, f"{key}.npz", write)


def _compute(model, profile: Profile, ds: Dataset, seed: int) -> Screen:
    from ..analysis.propagate import torch_threads, worth_threads
    from ..feeds import model_inputs

    small = worth_threads(len(ds), max(l.n_out * (l.positions or 1024) for l in model.layers)) == 1
    feeds = model_inputs(model, ds)
    with torch_threads(1) if small else nullcontext():     # small products: waking torch's threads costs more
        mean, cov, clean = _moments(model, profile, feeds, seed)
    last = model.layers[-1]
    adc = profile.for_layer(last.index, last.name).adc
    drift = any(profile.for_layer(l.index, l.name).drift.active for l in model.layers)
    return Screen(win_probabilities(mean, cov, adc if adc.active else None, seed), clean, "drift" if drift else "")


def _moments(model, profile: Profile, feeds: dict[str, np.ndarray], seed: int):
    """(mean logits (n, k), their covariance (n, k, k), the noise-free model's class (n,)), before the last
    layer's ADC (which ``win_probabilities`` applies to each draw): the covariance from the logits'
    Jacobians (``analysis.logits``), or for models outside it from the general prediction."""
    from ..analysis.logits import Outside, logit_moments
    from ..analysis.predict import layer_noises

    last = model.layers[-1]
    profiles = [profile] * (len(model.layers) - 1) + [derived(profile, {}, last={"adc": _NO_ADC}, layer=last)]
    noises, _ = layer_noises(model.layers, profiles)
    try:
        mean, cov, clipped = logit_moments(model, noises, feeds)
    except Outside:
        mean, cov, clipped = _contrast_moments(model, profiles, feeds)
    static = _static_pass(model, profile, feeds, seed, ideal_class=clipped)
    if static is not None:
        return static[0], cov, (mean.argmax(axis=1) if static[1] is None else static[1])
    return mean, cov, mean.argmax(axis=1)


def _contrast_moments(model, profiles: list[Profile], feeds: dict[str, np.ndarray]):
    """``_moments``'s mean and covariance from ``predict_raw`` (any model it predicts), with a noise-free layer
    of all pairwise differences z_j - z_k appended after the last analog layer: it gives Var(z_j - z_k)
    besides Var(z_j), so the full covariance of the logits.  The mean may be clipped by hidden ADCs."""
    from ..analysis.predict import predict_raw

    last = model.layers[-1]
    k = last.n_out
    pairs = list(combinations(range(k), 2))
    d = np.zeros((len(pairs), k), np.float32)
    for row, (i, j) in enumerate(pairs):
        d[row, i], d[row, j] = 1.0, -1.0
    contrasts = AnalogLayer(index=len(model.layers), name="hwloop-contrasts", op="Gemm", weight=d,
                            bias=np.zeros(len(pairs), np.float32), input=last.output, output="hwloop-contrasts",
                            meta={"dtype": last.meta.get("dtype", "float32")})
    at = model.steps.index(last) + 1
    wrapped = dataclasses.replace(model, layers=[*model.layers, contrasts],
                                  steps=[*model.steps[:at], contrasts, *model.steps[at:]])
    n_layers = len(model.layers)
    x = next(iter(feeds.values()))
    pred = predict_raw(wrapped, [*profiles, _ideal()], x, dtype="float32", common=False).layers
    mean = np.asarray(pred[n_layers - 1]["mean"], np.float64)
    v = np.asarray(pred[n_layers]["var"], np.float64)       # Var(z_i - z_j), (n, pairs)
    diag = np.asarray(pred[n_layers - 1]["var"], np.float64)
    cov = np.zeros((len(mean), k, k))
    for row, (i, j) in enumerate(pairs):
        cov[:, i, j] = cov[:, j, i] = 0.5 * (diag[:, i] + diag[:, j] - v[:, row])
    cov[:, np.arange(k), np.arange(k)] = diag
    return mean, cov, any(nz is not None for nz in (p.for_layer(l.index, l.name).adc.range
                                                   for p, l in zip(profiles[:-1], model.layers[:-1])))


def derived(profile: Profile, every: dict, last: dict | None = None, layer: AnalogLayer | None = None) -> Profile:
    """``profile`` with the entries ``every`` ({section: {key: value}}) set in its defaults and every layer
    override, and ``last`` in every override that applies to ``layer`` (by index or name); kept by content."""
    key = json.dumps([profile.sha256, every, last, None if layer is None else [layer.index, layer.name]],
                     sort_keys=True, default=str)
    if key not in _derived:
        while len(_derived) >= 4 * _MEMORY:
            _derived.pop(next(iter(_derived)))
        _derived[key] = _derive(profile, every, last, layer)
    return _derived[key]


def _derive(profile: Profile, every: dict, last: dict | None, layer: AnalogLayer | None) -> Profile:
    data = copy.deepcopy(dict(profile.data))
    layers = dict(data.get("layers") or {})
    for scope in [data, *layers.values()]:
        for section, vals in every.items():
            if section in scope or scope is data:
                scope[section] = {**dict(scope.get(section) or {}), **vals}
    if last:
        layers.setdefault(layer.index, {})
        for key in {layer.index, str(layer.index), layer.name} & set(layers):
            scope = layers[key]
            layers[key] = {**scope, **{sec: {**dict(scope.get(sec) or {}), **v} for sec, v in last.items()}}
    data["layers"] = {str(k): v for k, v in layers.items()}
    text = json.dumps(data, sort_keys=True, default=str)      # plain JSON (dates as text)
    data = json.loads(text)
    data["layers"] = {int(k) if k.isdigit() else k: v for k, v in data["layers"].items()}
    return Profile(data=data, text=text, path=None)


def _static_pass(model, profile: Profile, feeds: dict[str, np.ndarray], seed: int, ideal_class: bool
                 ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(the programmed chip's noise-free logits before its last ADC (n, k), the ideal model's class (n,) when
    ``ideal_class`` else None), or None when the profile has no static errors and no hidden ADC range.  The
    chip is programmed as ``check_model`` programs it (same seed, same draws: ``run_devices``); hidden
    layers' ADCs clip (their steps enter the covariance as variance)."""
    last = model.layers[-1]
    static = derived(profile, _FRESH, last={"adc": _NO_ADC}, layer=last)
    settings = [static.for_layer(l.index, l.name) for l in model.layers]
    if not any(st.weights.active or st.gain_offset.active or st.dac.active or st.transfer.active
               or st.adc.range is not None for st in settings):
        return None
    from ..devices.emulator import emulators
    from ..forward import walk
    from ..run_devices import ProgrammedDevices, IdealDevices, resolve_devices

    chip = ProgrammedDevices(model, resolve_devices(model, emulators(static, model.layers)), seed)
    layers, _ = walk(model, feeds, lambda L, v, r, step=None: chip.run(L, v, r, 0, step), 1)
    clean = None
    if ideal_class:
        ideal = IdealDevices(model)
        clean = np.asarray(walk(model, feeds, ideal.run, 1)[0][-1][0]).argmax(axis=1)
    return np.asarray(layers[-1][0], np.float64), clean


def win_probabilities(mean: np.ndarray, cov: np.ndarray, adc: Converter | None, seed: int) -> np.ndarray:
    """P(class wins) per sample, from the logits' mean (n, k) and covariance (n, k, k) before the last ADC
    ``adc`` (None: none), which clips and rounds each draw (equal values: the first class wins, as argmax)."""
    n, k = mean.shape
    rows, diag = np.arange(n), np.arange(k)
    top = mean.argmax(axis=1)
    probs = np.zeros((n, k))
    probs[rows, top] = 1.0
    var = cov[:, diag, diag]
    sd = np.sqrt(np.maximum(var[rows, top][:, None] + var - 2 * cov[rows, top], 0.0))   # sd(z_top - z_j)
    margin = mean[rows, top][:, None] - mean
    close = _close(margin, sd, mean, np.sqrt(np.maximum(var, 0.0)), top, adc)
    count = close.sum(axis=1)
    one = np.flatnonzero(count == 1) if adc is None else np.zeros(0, int)
    if one.size:                       # one competitor, no ADC: P(it wins) = Phi(-margin / sd), exactly
        from scipy.special import ndtr

        rival = close[one].argmax(axis=1)
        p = ndtr(-margin[one, rival] / sd[one, rival])
        probs[one, top[one]] = 1.0 - p
        probs[one, rival] = p
    close[rows, top] = True
    for m in np.unique(count[count > (1 if adc is None else 0)]):    # the top class and m rivals: m + 1 dims
        at = np.flatnonzero(count == m)
        cls = np.nonzero(close[at])[1].reshape(len(at), m + 1)        # in class order (argmax's tie rule)
        probs[at[:, None], cls] = _orthant(mean[at[:, None], cls], cov[at[:, None, None], cls[:, :, None],
                                                                        cls[:, None, :]], adc, seed)
    return probs


def _close(margin, sd, mean, sd_each, top, adc: Converter | None) -> np.ndarray:
    """(n, k): the classes that may beat the top one: within ``_SURE`` sd (plus one ADC step); with an ADC
    range, also any class before it that may share its top or bottom level (a tie goes to the first)."""
    n, k = mean.shape
    rows = np.arange(n)
    step = 0.0 if adc is None or adc.bits is None else (adc.range[1] - adc.range[0]) / (2 ** adc.bits - 1)
    close = (margin - step) < _SURE * sd
    if adc is not None and adc.range is not None:
        lo, hi = adc.range
        before = np.arange(k)[None, :] < top[:, None]
        up, down = mean + _SURE * sd_each >= hi - step, mean - _SURE * sd_each <= lo + step
        close |= before & ((up & up[rows, top][:, None]) | (down & down[rows, top][:, None]))
    close[rows, top] = False
    return close


def _orthant(mean: np.ndarray, cov: np.ndarray, adc: Converter | None, seed: int) -> np.ndarray:
    """P(class wins) from quasi-random draws of the logits ~ N(mean, cov), through the ADC."""
    n, k = mean.shape
    w, vec = np.linalg.eigh(cov)
    root = vec * np.sqrt(np.clip(w, 0, None))[:, None, :]
    draws = np.matmul(_normal_points(k, seed), root.transpose(0, 2, 1).astype(np.float32))
    draws += mean.astype(np.float32)[:, None, :]
    _levels(draws, adc)
    best = draws.argmax(axis=2) + k * np.arange(n)[:, None]
    return np.bincount(best.ravel(), minlength=n * k).reshape(n, k) / draws.shape[1]


def _levels(draws: np.ndarray, adc: Converter | None) -> None:
    """``draws`` (float32) in place through the ADC, as far as argmax sees it: clipped to its range and, with
    steps, replaced by the level's number (levels rise with their number, so the winner and the ties are
    those of the converted values; float32 arithmetic, a draw within float32 rounding of a step's edge
    may land on the other level)."""
    if adc is None or not adc.active:
        return
    if adc.range is None:
        from ..physics import convert

        convert(draws, adc)
        return
    lo, hi = adc.range
    np.clip(draws, lo, hi, out=draws)
    if adc.bits is not None:
        draws -= np.float32(lo)
        draws /= np.float32((hi - lo) / (2 ** adc.bits - 1))
        np.rint(draws, out=draws)


@lru_cache(maxsize=1)
def _ideal() -> Profile:
    """The ideal profile of the contrasts layer, parsed once."""
    return ideal_profile()


@lru_cache(maxsize=64)
def _normal_points(dim: int, seed: int) -> np.ndarray:
    """``_DRAWS`` standard normal points in ``dim`` dimensions: scrambled Sobol (lower error than random)."""
    from scipy.stats import norm, qmc

    u = qmc.Sobol(dim, scramble=True, seed=np.random.default_rng([seed, 0xA7A1])).random(_DRAWS)
    pts = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12)).astype(np.float32)
    pts.setflags(write=False)
    return pts
