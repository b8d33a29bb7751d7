"""First-order prediction of the noise covariance of every analog layer, without sampling.

``predict`` turns a model, a profile (or one per layer) and data into the
per-layer statistics the measured side reports (``analyze_run``), so the two
Datasets compare variable by variable.  The work is elsewhere: the noise of
one device (``noise``), the exact factored covariance algebra
(``covariance``), its propagation through a chain of dense layers
(``propagate``; convolutions and linear glue written out by ``chain``).
``predict_for_run`` rebuilds a recorded run's inputs from its provenance
(``store.Run.rebuild``).  Conventions, limits and cost: docs/analysis.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from ..data import Dataset, load_data
from ..errors import HwloopError
from ..layer import AnalogLayer
from ..profiles import Profile, load_profile
from .chain import NotAChain
from .linearised import APPROXIMATION, propagate_linearised
from .measured import build_dataset, layer_summary, snr_db
from .noise import LayerNoise, not_modelled
from .propagate import first_input, model_feeds, propagate, propagate_chain

__all__ = ["LayerNoise", "RawPrediction", "layer_noises", "not_modelled", "predict", "predict_for_run",
           "predict_raw", "propagate"]


def predict(model: Any, profile: Profile | str | Path | Sequence[Profile | str | Path], data: Dataset | str | np.ndarray,
            *, average: Mapping[int, int] | None = None, quantisation: bool = True, dtype: str = "float64",
            placements: Sequence[dict | None] | None = None) -> xr.Dataset:
    """Predicted per-layer noise statistics of ``model`` under ``profile`` on ``data``.

    ``model``: a ``hwloop.graph.Model`` (or anything with ``.layers``);
    ``profile``: a ``hwloop.profiles.Profile``, a path or a name, or a list
    of them (one per analog layer, as in a mixed bench run); ``data``: a
    ``hwloop.data.Dataset``, a spec string, or an input array (samples first).
    The Dataset has the variable names of ``analyze_run`` (``var_mean``,
    ``cm_var``, ``snr_db_median``, ``output_mean``, ``output_variance``, ...; ``cf.layer_array``).  ``dtype``
    float32 trades ~1e-6 relative precision of the covariance for ~1.5x speed.
    ``placements`` (one per layer, from a chip's provenance): where the chip really added its
    noise when its layer was scaled into range (``hwloop.analysis.placed.as_placed``).
    """
    raw = predict_raw(model, profile, data, average=average, quantisation=quantisation, dtype=dtype,
                      placements=placements)
    res, per_layer = raw.layers, raw.profiles
    skipped, method = raw.not_modelled, raw.method
    stats = []
    for r in res:
        st = {"mean": r["mean"], "var": r["var"], "cm_sample": r["cm"]}
        st.update(layer_summary(r["mean"], r["var"], r["cm"]))
        st["snr_db"] = snr_db(r["mean"], r["var"])
        stats.append(st)
    attrs = {"profile": getattr(per_layer[0], "name", str(per_layer[0])),
             "profile_sha256": getattr(per_layer[0], "sha256", ""), "samples": int(len(res[0]["mean"])),
             "quantisation": int(bool(quantisation)), "not_modelled": ", ".join(skipped) or "none", "method": method}
    return build_dataset([l.name for l in model.layers], stats, "predicted", attrs)


@dataclass(frozen=True)
class RawPrediction:
    """``predict``'s numbers without the Dataset: per analog layer ``mean``, ``pre``, ``var`` (B, N) and
    ``cm`` (B,) (``propagate``'s dicts); the per-layer profiles, what is not modelled, and the method."""

    layers: list[dict[str, np.ndarray]]
    profiles: list[Profile]
    not_modelled: list[str]
    method: str


def predict_raw(model: Any, profile: Profile | str | Path | Sequence[Profile | str | Path],
                data: Dataset | str | np.ndarray, *, average: Mapping[int, int] | None = None,
                quantisation: bool = True, dtype: str = "float64",
                placements: Sequence[dict | None] | None = None, common: bool = True) -> RawPrediction:
    """``predict``'s per-layer arrays, without building its Dataset (the arguments of ``predict``): for callers
    that need a few arrays fast (``hwloop check --analytic``), where the Dataset costs as much as the algebra.
    ``common=False`` skips the common mode ``cm`` (NaN) of dense chains, which costs a product per layer."""
    if isinstance(data, str):
        data = load_data(data)
    layers = list(model.layers)
    if not layers:
        raise HwloopError("the model has no analog layers")
    per_layer = _per_layer_profiles(profile, layers)
    noises, skipped = layer_noises(layers, per_layer, quantisation, placements)
    for l, nz in zip(layers, noises):
        if nz.rows is not None and l.n_in > nz.rows:
            raise HwloopError(f"layer {l.name!r}: split into row tiles of {nz.rows} inputs by the profile; "
                              "the prediction does not model row tiling")
    res, method = _propagate_model(model, layers, noises, data, average, dtype, common)
    if method != "exact" and any(nz.clip is not None for nz in noises):
        skipped.append("ADC range (clipping)")
    return RawPrediction(res, per_layer, skipped, method)


def _propagate_model(model: Any, layers: list[AnalogLayer], noises: list[LayerNoise], data: Any,
                     average: Mapping[int, int] | None, dtype: str, common: bool) -> tuple[list[dict], str]:
    """Per-layer results and how they were obtained: exactly through a chain of dense layers, or to
    first order through any model the runner executes (``linearised``), saying why."""
    if not hasattr(model, "steps"):
        x = np.asarray(getattr(data, "x", data), dtype=np.float64)
        return propagate(layers, noises, x, average, dtype, common=common), "exact"
    feeds = model_feeds(model, data)
    try:
        return propagate_chain(model, layers, noises, first_input(model, feeds), average, dtype, common), "exact"
    except NotAChain as why:
        return propagate_linearised(model, noises, feeds, average), f"{APPROXIMATION}, because {why}"


def _per_layer_profiles(profile: Any, layers: list[AnalogLayer]) -> list[Profile]:
    """One loaded profile per analog layer; overrides naming layers the model lacks are an error."""
    per_layer = list(profile) if isinstance(profile, (list, tuple)) else [profile] * len(layers)
    if len(per_layer) != len(layers):
        raise HwloopError(f"{len(per_layer)} profiles given for {len(layers)} analog layers")
    per_layer = [load_profile(p) if isinstance(p, str) or hasattr(p, "__fspath__") else p for p in per_layer]
    for p in {id(p): p for p in per_layer}.values():
        p.check_layers(layers)
    return per_layer


def layer_noises(layers: Sequence[AnalogLayer], profiles: Sequence[Profile], quantisation: bool = True,
                 placements: Sequence[dict | None] | None = None) -> tuple[list[LayerNoise], list[str]]:
    """Each layer's noise as its device (one loaded profile per layer) adds it (``rows``: its row tiles), and
    what the prediction leaves out."""
    settings = [p.for_layer(l.index, l.name) for p, l in zip(profiles, layers)]
    noises = [LayerNoise.from_settings(st, l, quantisation) for l, st in zip(layers, settings)]
    # an activation the neurons lack runs on the host, after the device's noise: the noise is on its input
    noises = [replace(nz, placement="pre") if st.transfer.on_host(l.activation) and nz.placement == "post" else nz
              for nz, l, st in zip(noises, layers, settings)]
    if placements is not None:
        from .placed import as_placed

        noises = [as_placed(nz, pl) for nz, pl in zip(noises, placements)]
    return noises, sorted({n for st in settings for n in not_modelled(st)})


def predict_for_run(run: Any, model: str | Path | None = None, profile: str | Path | None = None,
                    data: str | Dataset | None = None, quantisation: bool = True) -> xr.Dataset:
    """The prediction for a recorded run (a ``store.Run``): model, per-layer profiles and data from its
    provenance unless given (``Run.rebuild``, which checks that the data reproduce the run's noise-free
    first layer, so a prediction is never silently compared with a different set of samples).

    Each layer is predicted with its own device's description (``hwloop.analysis.placed``):
    ``profile`` stands in only for devices without one (a chip with no ``twin:``).
    """
    from .rebuild import rebuild_run

    inputs = run.rebuild(model, profile, data) if hasattr(run, "rebuild") else rebuild_run(run, model, profile, data)
    pred = predict(inputs.model, [src.profile for src in inputs.sources], inputs.data, quantisation=quantisation,
                   placements=[src.placement for src in inputs.sources])
    pred.attrs["devices"] = [src.label for src in inputs.sources]
    return pred
