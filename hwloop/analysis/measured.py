"""Statistics of recorded layer outputs (repeat, sample, neuron): how much noise, of which kind, per layer.

Emulated and measured runs look the same in the run store, so nothing here
asks which it was.  Every estimator is written down in docs/analysis.md; the
names of the per-layer variables are shared with ``predict`` so the two
Datasets can be compared variable by variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from .. import cf
from ..errors import HwloopError
from ..files import atomic_path
from ..numbers import ACCURACY_STD_NOTE, mean_sem, pm

if TYPE_CHECKING:
    from ..runner import RunResult
    from ..store import Run

#: values (repeats x samples x neurons) handled at once, to bound memory on large runs
_CHUNK = 1 << 23

#: per-layer summary variables, in table order: name -> (column header, format)
SUMMARY = {
    "var_mean": ("var", "{:.3e}"),
    "cm_var": ("common", "{:.3e}"),
    "ind_var": ("indep", "{:.3e}"),
    "cm_fraction": ("cm%", "{:.1%}"),
    "snr_db_median": ("SNR dB", "{:.1f}"),
    "snr_db_q25": ("q25", "{:.1f}"),
    "snr_db_q75": ("q75", "{:.1f}"),
    "fit_additive": ("add", "{:.2e}"),
    "fit_multiplicative": ("mult", "{:.2e}"),
}


#: the units of the table's columns, printed under it
UNITS_NOTE = ("units: var, common, indep, add, pred var in output units² (a.u.^2); SNR dB, q25, q75 in dB (median "
              "and quartiles over samples and neurons); mult, cm%, pred/meas dimensionless")

#: what the add/mult columns are, printed under every table that shows them
FIT_NOTE = ("add, mult: least-squares fit var = add + mult * mean^2 over (sample, neuron), ± one standard error; "
            "meaningful only in layers where the device injects noise (downstream layers carry propagated noise, "
            "and a negative term there means the model does not describe them)")


def _fluctuation_moments(y: np.ndarray | xr.DataArray) -> dict[str, np.ndarray]:
    """Per-sample moments of y (R, S, N) over repetitions, vectorised over samples, in float64.

    Besides the mean and variance per neuron, keeps the variance across
    repetitions of two projections of the fluctuation (its plain sum and its
    sum weighted by the mean), which give the off-diagonal covariance sums
    without forming any N x N matrix.
    """
    r, s, n = y.shape
    if r < 2:
        raise HwloopError(f"noise statistics need at least 2 repetitions, the run has {r}")
    step = max(1, _CHUNK // max(1, r * n))
    out = {k: [] for k in ("mean", "var", "var_sum", "var_proj")}
    for lo in range(0, s, step):
        blk = np.asarray(y[:, lo:lo + step], dtype=np.float64)
        m = blk.mean(axis=0)
        d = blk - m
        out["mean"].append(m)
        out["var"].append(np.einsum("rsn,rsn->sn", d, d) / (r - 1))
        t = d.sum(axis=2)
        out["var_sum"].append(np.einsum("rs,rs->s", t, t) / (r - 1))
        u = np.einsum("rsn,sn->rs", d, m)
        out["var_proj"].append(np.einsum("rs,rs->s", u, u) / (r - 1))
    return {k: np.concatenate(v) for k, v in out.items()}


def covariance_split(mean: np.ndarray, var: np.ndarray, var_sum: np.ndarray,
                     var_proj: np.ndarray) -> dict[str, Any]:
    """Split the noise covariance of one layer into common-mode and independent parts.

    Inputs per sample s (mean, var: (S, N); var_sum = sum_ij C_ij, var_proj =
    sum_ij m_i m_j C_ij: (S,)).  Returns the mean off-diagonal covariance per
    sample (``cm``, output units^2) and a least-squares fit of every
    off-diagonal element to ``a + b m_i m_j`` pooled over samples: ``a`` reads
    as a correlated additive intensity (D_AC), ``b`` as a correlated
    multiplicative one (D_MC); both NaN when the means cannot separate them.
    """
    n = mean.shape[1]
    if n < 2:
        nan = np.full(mean.shape[0], np.nan)
        return {"cm": nan, "cm_additive": np.nan, "cm_multiplicative": np.nan}
    t1 = var_sum - var.sum(axis=1)                       # sum_{i!=j} C_ij
    t2 = var_proj - (mean ** 2 * var).sum(axis=1)         # sum_{i!=j} m_i m_j C_ij
    s1, s2, s4 = mean.sum(1), (mean ** 2).sum(1), (mean ** 4).sum(1)
    p0 = np.full_like(s1, n * (n - 1.0))                  # sum_{i!=j} 1
    p1 = s1 ** 2 - s2                                     # sum_{i!=j} m_i m_j
    p2 = s2 ** 2 - s4                                     # sum_{i!=j} m_i^2 m_j^2
    a = np.array([[p0.sum(), p1.sum()], [p1.sum(), p2.sum()]])
    rhs = np.array([t1.sum(), t2.sum()])
    det = a[0, 0] * a[1, 1] - a[0, 1] ** 2
    if a[1, 1] > 0 and det > 1e-9 * a[0, 0] * a[1, 1]:
        add, mul = np.linalg.solve(a, rhs)
    else:
        add, mul = np.nan, np.nan
    return {"cm": t1 / p0, "cm_additive": float(add), "cm_multiplicative": float(mul)}


def signal_fit(mean: np.ndarray, var: np.ndarray, shot: bool = False) -> dict[str, float]:
    """Ordinary least squares of variance on [1, mean^2] (and |mean| with ``shot``) over samples and neurons.

    With the usual OLS standard errors (``fit_additive_stderr``, ...): the terms can come out negative
    where the model does not describe the layer (noise not injected there), and the error says how far.
    """
    m = mean.reshape(-1)
    cols = [np.ones_like(m), m ** 2] + ([np.abs(m)] if shot else [])
    x = np.stack(cols, axis=1)
    y = var.reshape(-1)
    se = np.full(x.shape[1], np.nan)
    if np.linalg.matrix_rank(x) < x.shape[1]:
        coef = np.full(x.shape[1], np.nan)
        coef[0] = float(var.mean())                       # no signal spread: all is "additive"
    else:
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        dof = len(y) - x.shape[1]
        if dof > 0:
            s2 = float(np.sum((y - x @ coef) ** 2)) / dof
            se = np.sqrt(np.maximum(np.diag(np.linalg.pinv(x.T @ x)) * s2, 0))
    out = {"fit_additive": float(coef[0]), "fit_multiplicative": float(coef[1]),
           "fit_additive_stderr": float(se[0]), "fit_multiplicative_stderr": float(se[1])}
    if shot:
        out["fit_shot"] = float(coef[2])
    return out


def snr_db(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """10 log10(mean^2 / var) per element; +inf where there is no noise, -inf where the mean is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10 * np.log10(mean ** 2 / var)
    out[var == 0] = np.inf
    return out


def layer_summary(mean: np.ndarray, var: np.ndarray, cm: np.ndarray) -> dict[str, float]:
    """The per-layer numbers of the accumulation curve, from per-sample/neuron moments (shared with predict)."""
    db = snr_db(mean, var)
    v = float(var.mean())
    c = float(np.mean(cm))
    # no interpolation between infinite values (noise-free neurons): inf - inf would be NaN
    method = "linear" if np.isfinite(db).all() else "nearest"
    q25, q50, q75 = np.quantile(db, [0.25, 0.5, 0.75], method=method) if db.size else (np.nan,) * 3
    return {
        "var_mean": v, "cm_var": c, "ind_var": v - c,
        "cm_fraction": c / v if v > 0 else np.nan,
        "snr_db_median": float(q50), "snr_db_q25": float(q25), "snr_db_q75": float(q75),
    }


def analyze_layer(y: np.ndarray | xr.DataArray, clean: np.ndarray | None = None, shot: bool = False) -> dict[str, Any]:
    """Every statistic of one layer's outputs y (repeat, sample, neuron); see docs/analysis.md.

    ``y`` may be a numpy array or a lazy (Zarr-backed) DataArray: it is read in chunks of samples.
    """
    mom = _fluctuation_moments(y)
    split = covariance_split(**mom)
    mean, var = mom["mean"], mom["var"]
    out: dict[str, Any] = {"mean": mean, "var": var, "snr_db": snr_db(mean, var), "cm_sample": split["cm"]}
    out.update(layer_summary(mean, var, split["cm"]))
    out.update(signal_fit(mean, var, shot))
    out["cm_additive"], out["cm_multiplicative"] = split["cm_additive"], split["cm_multiplicative"]
    # independent part of the signal relation: the diagonal minus the fitted common part
    if np.isfinite(split["cm_additive"]):
        ind = var - split["cm_additive"] - split["cm_multiplicative"] * mean ** 2
        fit = signal_fit(mean, ind)
        out["ind_additive"], out["ind_multiplicative"] = fit["fit_additive"], fit["fit_multiplicative"]
    else:
        out["ind_additive"] = out["ind_multiplicative"] = np.nan
    if clean is not None:
        out["offset_rms"] = float(np.sqrt(np.mean((mean - np.asarray(clean, np.float64)) ** 2)))
    return out


def average_repeats(y: np.ndarray, k: int) -> np.ndarray:
    """Average consecutive groups of k repetitions (R, ...) -> (R // k, ...): multi-execution of a layer."""
    y = np.asarray(y)
    if k < 1 or y.shape[0] < k:
        raise HwloopError(f"cannot average groups of {k} repetitions out of {y.shape[0]}")
    g = y.shape[0] // k
    return y[: g * k].reshape(g, k, *y.shape[1:]).mean(axis=1)


def _layer_vars(st: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per (sample, neuron) arrays of one layer, and the SNR per neuron (median over samples)."""
    neuron_db = np.median(st["snr_db"], axis=0)
    return {"mean": st["mean"], "var": st["var"], "snr_db": st["snr_db"],
            "snr_db_neuron": neuron_db, "snr_neuron": 10 ** (neuron_db / 20)}   # |mean| / std


def build_dataset(names: Sequence[str], stats: Sequence[Mapping[str, Any]], kind: str,
                  attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Per-layer summaries (dim ``layer``) plus the per-layer arrays under ``cf.LAYER_ARRAYS``' names
    (dims ``(layer, sample, neuron)``, NaN past each layer's width), one Dataset."""
    data: dict[str, tuple] = {"layer_name": (("layer",), np.array(list(names), dtype=str))}
    keys = [k for k in stats[0] if np.ndim(stats[0][k]) == 0] if stats else []
    for key in keys:
        data[key] = (("layer",), np.array([float(st.get(key, np.nan)) for st in stats]))
    data.update(cf.layer_arrays([_layer_vars(st) for st in stats]))
    ds = xr.Dataset(data, coords={"layer": np.arange(len(names))})
    ds.attrs.update({"kind": kind, **(attrs or {})})
    return cf.annotate(ds, cf.ANALYSIS)


def _argmax_flips(output: np.ndarray, clean_output: np.ndarray) -> np.ndarray:
    """(repeat,) fraction of samples whose noisy class differs from the noise-free one."""
    return (np.argmax(output, axis=-1) != np.argmax(clean_output, axis=-1)[None]).mean(axis=1)


def analyze_run(run: "Run | RunResult", shot: bool = False) -> xr.Dataset:
    """Measured statistics of every analog layer of a run (``hwloop.store.Run`` or anything with its read API)."""
    names, layer, clean = _read_api(run)
    if not names:
        raise HwloopError("the run has no analog layers recorded")
    if layer(0).shape[1] == 0:
        raise HwloopError(f"{getattr(run, 'path', 'the run')}: no completed batch to analyse yet "
                          "(an interrupted run: continue it with hwloop run ... --resume)")
    stats = [analyze_layer(layer(k), clean(k), shot) for k in range(len(names))]
    ds = build_dataset(names, stats, "measured", {"repeats": int(layer(0).shape[0])})
    acc = _maybe(lambda: np.asarray(run.accuracy, dtype=np.float64))
    if acc is not None and acc.size:
        ds["accuracy"] = (("repeat",), acc, cf.var_attrs(cf.ANALYSIS, "accuracy"))
        ds.coords["repeat"] = ("repeat", np.arange(acc.size), cf.var_attrs(cf.COORDS, "repeat"))
        ds.attrs["accuracy_mean"], ds.attrs["accuracy_sem"] = mean_sem(acc)
        ds.attrs["accuracy_std"] = float(acc.std(ddof=1)) if acc.size > 1 else 0.0     # old key, kept for readers
        ds.attrs["accuracy_std_between_repeats"] = float(acc.std(ddof=1)) if acc.size > 1 else float("nan")
        ds.attrs["accuracy_std_description"] = ACCURACY_STD_NOTE
    out, clean_out = _maybe(lambda: np.asarray(run.output)), _maybe(lambda: np.asarray(run.clean_output))
    if out is not None and clean_out is not None:
        flips = _argmax_flips(out, clean_out)
        ds["flip_rate"] = (("repeat",), flips, cf.var_attrs(cf.ANALYSIS, "flip_rate"))
        ds.attrs["flip_rate_mean"] = float(flips.mean())
    return ds


def _read_api(run: "Run | RunResult") -> tuple[list[str], Callable, Callable]:
    """(layer names, k -> outputs, k -> clean outputs or None) for a stored ``Run`` or an in-memory ``RunResult``."""
    if hasattr(run, "layer_names"):  # a stored run: arrays stay lazy and are read chunk by chunk
        return (list(run.layer_names), run.layer, lambda k: _maybe(lambda: np.asarray(run.clean(k))))
    if getattr(run, "layers", None) is None:
        raise HwloopError("the run result holds no layer outputs (it was written to a store: open that instead)")
    names = [str(n) for n in run.attrs.get("layer_names", [])] or [
        d.get("name", f"layer{k}") for k, d in enumerate(run.attrs.get("devices", []))]
    names = names if len(names) == len(run.layers) else [f"layer{k}" for k in range(len(run.layers))]
    clean = run.clean_layers
    return names, lambda k: np.asarray(run.layers[k]), lambda k: None if clean is None else np.asarray(clean[k])


def _maybe(get: Callable[[], Any]) -> Any:
    """The value, or None when the run does not carry it (e.g. an interrupted run without outputs)."""
    try:
        return get()
    except (AttributeError, KeyError, TypeError):
        return None


def save_analysis(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as NetCDF (``RUN.analysis.nc`` beside the run), atomically."""
    path = Path(path)
    clean = ds.copy()
    clean.attrs = cf.store_attrs(ds.attrs)
    with atomic_path(path) as tmp:
        clean.to_netcdf(tmp, engine="scipy")
    return path


def summary_cell(ds: xr.Dataset, name: str, k: int) -> str:
    """Layer ``k``'s value of summary variable ``name`` as the tables show it (± its stderr when known)."""
    text = SUMMARY[name][1].format(float(ds[name].values[k]))
    if f"{name}_stderr" in ds and np.isfinite(ds[f"{name}_stderr"].values[k]):
        text += f"±{float(ds[f'{name}_stderr'].values[k]):.1e}"
    return text


def layer_table(ds: xr.Dataset, predicted: xr.Dataset | None = None) -> str:
    """The per-layer summary as a fixed-width text table (measured, and predicted variance when given)."""
    cols = [c for c in SUMMARY if c in ds]
    header = ["#", "layer"] + [SUMMARY[c][0] for c in cols]
    if predicted is not None:
        header += ["pred var", "pred/meas"]
    rows = []
    for k in range(ds.sizes["layer"]):
        row = [str(k), str(ds["layer_name"].values[k])]
        row += [summary_cell(ds, c, k) for c in cols]
        if predicted is not None:
            pv = float(predicted["var_mean"].values[k])
            mv = float(ds["var_mean"].values[k])
            row += [f"{pv:.3e}", f"{pv / mv:.3f}" if mv > 0 else "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows] + [UNITS_NOTE]
    if "fit_additive" in ds:
        lines.append(FIT_NOTE)
    if "accuracy" in ds:
        lines.append(pm(ds["accuracy"].values))
    if "flip_rate_mean" in ds.attrs:
        lines.append(f"noisy prediction differs from the noise-free one in {ds.attrs['flip_rate_mean']:.2%} of cases")
    return "\n".join(lines)
