"""CF-style metadata for every store hwloop writes: coordinates, units, long names, flat attributes.

Why: a run, analysis, sweep or calibration store should say what it holds to
any tool that reads xarray or netCDF, without hwloop installed, and
``ds.to_netcdf(...)`` must work on what ``xarray.open_zarr`` returns.  So:

- every dimension has a coordinate (indices where nothing better exists);
- every variable carries ``units`` and ``long_name`` (from the tables below);
- provenance is stored as flat global attributes: scalars as they are, and
  anything nested (dicts, lists, booleans, None) as a JSON string under
  ``KEY_json``.  ``decode_attrs`` gives the original dict back.

Units: the analog layers' outputs are in the device's output units, written
``a.u.`` (arbitrary units); variances are in ``a.u.^2``; counts and fractions
are dimensionless, ``1`` as CF writes it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

#: suffix of an attribute that holds a JSON-encoded value
JSON_SUFFIX = "_json"
#: global attribute naming the conventions followed
CONVENTIONS = {"Conventions": "CF-1.10"}

OUT, OUT2, ONE = "a.u.", "a.u.^2", "1"

#: coordinate name -> (long_name, units)
COORDS = {
    "repeat": ("repetition index (independent noise draw)", ONE),
    "sample": ("sample index in the data set", ONE),
    "class": ("class index", ONE),
    "neuron": ("neuron (output channel) index of the layer", ONE),
    "batch": ("batch index", ONE),
    "layer": ("analog layer index (0-based)", ONE),
    "probe": ("calibration probe (measured block) index", ONE),
    "param": ("index into the flattened parameter vector", ONE),
    "site": ("noise injection site index (0-based)", ONE),
    "axis": ("index along this axis of a graph output (its axis 0 is the sample)", ONE),
}

#: run store: root and layer-group variables
RUN = {
    "output": ("class scores (final outputs) per repetition", OUT),
    "clean_output": ("noise-free class scores", OUT),
    "label": ("true class", ONE),
    "prediction": ("predicted class (argmax of output)", ONE),
    "correct": ("1 where the prediction equals the label", ONE),
    "accuracy": ("fraction of samples classified correctly", ONE),
    "batch_done": ("1 once every array of the batch is written (bookkeeping)", ONE),
}
LAYER = {
    "output": ("analog layer output per repetition", OUT),
    "clean": ("noise-free analog layer output", OUT),
}

#: analysis / prediction Datasets (per-layer summaries and per-layer arrays, stem before _k)
ANALYSIS = {
    "layer_name": ("analog layer name in the ONNX graph", None),
    "var_mean": ("mean noise variance over samples and neurons", OUT2),
    "cm_var": ("common-mode part: mean covariance between two different neurons", OUT2),
    "ind_var": ("independent part: mean variance minus the common-mode part", OUT2),
    "cm_fraction": ("common-mode share of the variance (may be negative)", ONE),
    "snr_db_median": ("median signal-to-noise ratio 10 log10(mean^2/var)", "dB"),
    "snr_db_q25": ("25th percentile of the signal-to-noise ratio", "dB"),
    "snr_db_q75": ("75th percentile of the signal-to-noise ratio", "dB"),
    "fit_additive": ("additive term of the fit var = a + b mean^2 (may be negative)", OUT2),
    "fit_additive_stderr": ("standard error of the additive term", OUT2),
    "fit_multiplicative": ("multiplicative term of the fit var = a + b mean^2 (may be negative)", ONE),
    "fit_multiplicative_stderr": ("standard error of the multiplicative term", ONE),
    "fit_shot": ("shot-noise term of the fit var = a + b mean^2 + c |mean|", OUT),
    "cm_additive": ("correlated additive intensity (fit of off-diagonal covariance)", OUT2),
    "cm_multiplicative": ("correlated multiplicative intensity (fit of off-diagonal covariance)", ONE),
    "ind_additive": ("independent additive intensity", OUT2),
    "ind_multiplicative": ("independent multiplicative intensity", ONE),
    "offset_rms": ("rms difference between the mean and the noise-free output", OUT),
    "accuracy": ("accuracy per repetition", ONE),
    "flip_rate": ("fraction of samples whose noisy class differs from the noise-free one", ONE),
    "mean": ("mean output over repetitions", OUT),
    "var": ("output variance over repetitions (ddof 1)", OUT2),
    "snr_db": ("signal-to-noise ratio 10 log10(mean^2/var)", "dB"),
    "snr_db_neuron": ("median SNR of each neuron over samples", "dB"),
    "snr_neuron": ("median |mean|/std of each neuron over samples", ONE),
    # the per-layer arrays under their own names, dimensions (layer, sample, neuron) / (layer, neuron)
    "output_mean": ("mean of the layer output over repetitions (NaN past the layer's neurons)", OUT),
    "output_variance": ("variance of the layer output over repetitions, ddof 1 (NaN past the layer's neurons)",
                        OUT2),
    "output_snr_db": ("signal-to-noise ratio 10 log10(mean^2/variance) (NaN past the layer's neurons)", "dB"),
    "neuron_snr_db": ("median over samples of each neuron's signal-to-noise ratio", "dB"),
    "neuron_snr": ("median over samples of each neuron's |mean|/standard deviation", ONE),
    "layer_neurons": ("number of neurons of the layer (entries past it along neuron are NaN)", ONE),
}

#: analysis / prediction arrays per layer: the key the estimators use -> the Dataset's variable name.
#: Older files (before these names) hold one variable per layer, ``KEY_k`` with dimensions (sample, neuron_k).
LAYER_ARRAYS = {"mean": "output_mean", "var": "output_variance", "snr_db": "output_snr_db",
                "snr_db_neuron": "neuron_snr_db", "snr_neuron": "neuron_snr"}
#: the variable that says how many neurons of the padded ``neuron`` dimension each layer has
LAYER_NEURONS = "layer_neurons"

#: Walking Noise sweep store
SWEEP = {
    "accuracy": ("test accuracy with noise at the site", ONE),
    "accuracy_eval_only": ("test accuracy of the clean-trained model with noise at the site", ONE),
    "weight_mag": ("mean |W| of each weight layer of the noise-trained model", ONE),
    "binarization": ("fraction of activations within 5% of either end of their range", ONE),
    "clean_accuracy": ("test accuracy of the model trained without noise", ONE),
    "clean_weight_mag": ("mean |W| of each weight layer of the clean-trained model", ONE),
    "clean_binarization": ("binarisation of the clean-trained model's activations", ONE),
    "clean_state": ("flattened parameters of the clean-trained model", ONE),
    "site_name": ("noise injection site (ONNX node or torch module)", None),
    "layer": ("weight layer of the torch model", None),
    "probe": ("site whose activations are probed", None),
}

#: calibration store (root arrays, dimension ``probe``)
CALIBRATION = {
    "done": ("1 once the probe's block is written (bookkeeping)", ONE),
    "t": ("time since the probe's layer was programmed", "s"),
    "temperature": ("chip temperature reported by the bench", "degC"),
    "session": ("measurement session the block was taken in", ONE),
}


def var_attrs(table: Mapping[str, tuple], name: str) -> dict[str, str]:
    """``{"long_name", "units"}`` for ``name``: its entry in ``table`` or ``COORDS``, else its stem's
    (``var_2`` and ``neuron_2`` read as ``var`` and ``neuron``); empty when none is known."""
    name = name.rsplit("/", 1)[-1]          # a group path names its last part
    stem = name.rsplit("_", 1)[0]
    for t in (table, COORDS):
        for key in (name, stem):
            if key in t:
                long_name, units = t[key]
                return {"long_name": long_name, **({"units": units} if units is not None else {})}
    return {}


def annotate(ds, table: Mapping[str, tuple], extra: Mapping[str, dict] | None = None):
    """Set ``long_name``/``units`` on every variable and coordinate of the xarray Dataset ``ds`` (in place).

    Dimensions without a coordinate get integer ones; ``extra`` adds per-variable attributes.
    """
    for dim in ds.dims:
        if dim not in ds.coords:
            ds.coords[dim] = np.arange(ds.sizes[dim])
    for name in list(ds.variables):
        for k, v in var_attrs(table, str(name)).items():
            ds[name].attrs.setdefault(k, v)
        ds[name].attrs.update((extra or {}).get(str(name), {}))
    return ds


def layer_arrays(per_layer: Sequence[Mapping[str, np.ndarray]]) -> dict[str, tuple]:
    """Variables of ``LAYER_ARRAYS`` built from per-layer arrays ((sample, neuron_k) or (neuron_k,)).

    Layers differ in width, so each is padded with NaN to the widest along one ``neuron`` dimension;
    ``LAYER_NEURONS`` says where each layer's neurons end.
    """
    if not per_layer:
        return {}
    widths = [np.shape(st["mean"])[-1] for st in per_layer]
    out: dict[str, tuple] = {LAYER_NEURONS: (("layer",), np.array(widths, np.int32))}
    for key, name in LAYER_ARRAYS.items():
        if key not in per_layer[0]:
            continue
        first = np.asarray(per_layer[0][key])
        arr = np.full((len(per_layer), *first.shape[:-1], max(widths)), np.nan)
        for k, st in enumerate(per_layer):
            arr[k, ..., : widths[k]] = st[key]
        out[name] = (("layer", "sample", "neuron") if first.ndim == 2 else ("layer", "neuron"), arr)
    return out


def layer_array(ds, key: str, k: int) -> np.ndarray | None:
    """Layer ``k``'s array ``key`` (a key of ``LAYER_ARRAYS``) from an analysis/prediction Dataset, as
    (sample, neuron_k) or (neuron_k,) without padding; None when the Dataset lacks it.

    Reads the named variables (``output_mean`` ...) and falls back to the per-layer ``mean_k`` of older files.
    """
    name = LAYER_ARRAYS[key]
    if name in ds.variables:
        width = int(ds[LAYER_NEURONS].values[k]) if LAYER_NEURONS in ds.variables else ds.sizes["neuron"]
        return np.asarray(ds[name].isel(layer=k).values)[..., :width]
    old = f"{key}_{k}"
    return np.asarray(ds[old].values) if old in ds.variables else None


def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Flat, netCDF-safe global attributes: str/int/float as they are, anything else as ``KEY_json``."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, (str, int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            out[k] = v.item() if isinstance(v, np.generic) else v
        else:
            out[k + JSON_SUFFIX] = json.dumps(v, default=_jsonable)
    return out


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``encode_attrs``: ``KEY_json`` attributes parsed back under ``KEY``."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if k.endswith(JSON_SUFFIX) and isinstance(v, str):
            out[k[: -len(JSON_SUFFIX)]] = json.loads(v)
        elif k not in CONVENTIONS:
            out[k] = v
    return out


def store_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a store's root gets: the encoded provenance plus the ``Conventions`` attribute."""
    return {**CONVENTIONS, **encode_attrs(attrs)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
