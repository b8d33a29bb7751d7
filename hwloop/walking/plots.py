"""Report sections of a sweep: accuracy vs sigma per site, midpoints, weight growth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from ..cf import decode_attrs
from ..plotting import auto_log, errorband, legend
from ..report import Section, figure_html, new_figure, table_html, text_html, write_report
from .midpoint import Midpoint, at_chance, midpoint


def clean_accuracy(ds: xr.Dataset) -> float:
    """The clean accuracy the midpoints are measured from (mean over clean models when trained)."""
    if "clean_accuracy" in ds:
        return float(np.nanmean(ds.clean_accuracy.values))
    return float(ds.attrs["clean_accuracy"])


def chance_warning(ds: xr.Dataset) -> str | None:
    """One line when the clean accuracy is already at chance (``midpoint.at_chance``): the midpoints mean nothing."""
    n, clean = int(ds.attrs["n_classes"]), clean_accuracy(ds)
    samples = ds.attrs.get("n_eval_samples")
    if not at_chance(clean, n, samples):
        return None
    within = f"within 3 standard errors on {samples} samples" if samples else "at or below it"
    return (f"clean accuracy {clean:.4f} is at chance (1/{n} = {1 / n:.4f}, {within}): the model has no accuracy "
            "to lose, so its midpoints and most fragile site are meaningless")


def sweep_midpoints(ds: xr.Dataset, var: str = "accuracy", seed: int = 0) -> list[Midpoint]:
    """Midpoint per site of ``var`` (``accuracy`` or ``accuracy_eval_only``)."""
    clean = clean_accuracy(ds)
    return [midpoint(ds.sigma.values, ds[var].isel(site=k).values, clean, int(ds.attrs["n_classes"]), seed=seed)
            for k in range(ds.sizes["site"])]


def layer_before(ds: xr.Dataset) -> list[int | None]:
    """Per site, the index of the last product layer at or before it (None for the input)."""
    names = [s["name"] for s in decode_attrs(ds.attrs)["sites"]]
    layers = [str(v) for v in ds.layer.values]
    out, last = [], None
    for n in names:
        if n in layers:
            last = layers.index(n)
        out.append(last)
    return [out[int(k)] for k in ds.site.values]


def _sigma_units(ds: xr.Dataset) -> str:
    """The sigma coordinate's units as the figures write them (``a.u.`` is the device's output units)."""
    units = ds.sigma.attrs.get("units", "a.u.")
    return "output units" if units == "a.u." else units


def _sigma_label(ds: xr.Dataset, prefix: str = "") -> str:
    what = "amplitude A" if "amplitude" in ds.sigma.attrs.get("long_name", "") else "standard deviation σ"
    return f"{prefix}noise {what} [{_sigma_units(ds)}]"


def _accuracy_section(ds: xr.Dataset, variants) -> Section:
    names = [str(v) for v in ds.site_name.values]
    fig, axes = new_figure(ncols=len(variants), width=7.0 if len(variants) == 1 else 5.6, height=4.2)
    axes = np.atleast_1d(axes).ravel()
    chance = 1.0 / int(ds.attrs["n_classes"])
    for ax, (var, label) in zip(axes, variants):
        r = ds.sizes["repeat"]
        m = ds[var].mean("repeat")
        se = ds[var].std("repeat", ddof=1) / np.sqrt(r) if r > 1 else xr.full_like(m, np.nan)
        for k, name in enumerate(names):
            errorband(ax, ds.sigma.values, m.isel(site=k).values, se.isel(site=k).values,
                      f"{int(ds.site.values[k])}: {name}", marker=".")
        auto_log(ax, ds.sigma.values, axis="x")
        ax.axhline(chance, color="grey", lw=1, ls="--", label=f"chance (1/{int(ds.attrs['n_classes'])})")
        ax.set(xlabel=_sigma_label(ds), ylabel="test accuracy [1]", title=label, ylim=(0, 1.02))
    legend(axes[-1])
    note = (f"Lines: mean over {ds.sizes['repeat']} repeat(s); bands: ± one standard error of that mean"
            + ("" if ds.sizes["repeat"] > 1 else " (one repeat: no band)") + ". σ is a standard deviation; "
            "a device profile's D is a variance (D = σ²).")
    return Section("Accuracy versus noise per site", figure_html(fig, "accuracy vs sigma", "walk-accuracy")
                   + text_html(note, "note"))


def _midpoint_section(ds: xr.Dataset, mids: dict) -> Section:
    names = [str(v) for v in ds.site_name.values]
    fig, ax = new_figure(width=8, height=3.8)
    x = np.arange(len(names))
    reached = [m.value for ms in mids.values() for m in ms if m.reached]
    top = max(reached + [float(ds.sigma.max())]) * 1.5
    offset = np.linspace(-0.15, 0.15, len(mids)) if len(mids) > 1 else [0.0]
    for j, (label, ms) in enumerate(mids.items()):
        ok = np.array([m.reached for m in ms])
        vals = np.array([m.value for m in ms])
        err = np.array([[m.value - m.lo, m.hi - m.value] if m.reached and np.isfinite(m.hi) else [0, 0]
                        for m in ms]).T.clip(min=0)
        (line,) = ax.plot([], [], "o", label=f"{label} (95% bootstrap interval)")
        ax.errorbar(x[ok] + offset[j], vals[ok], yerr=err[:, ok], fmt="o", capsize=3, color=line.get_color())
        if (~ok).any():
            ax.plot(x[~ok] + offset[j], np.full((~ok).sum(), top), "^", color=line.get_color(), mfc="none",
                    label=f"{label}: not reached within the sweep")
    unreached = any(not m.reached for ms in mids.values() for m in ms)
    auto_log(ax, reached + ([top] if unreached else []))    # the decades actually drawn decide the labels
    ax.set_xticks(x, [str(int(k)) for k in ds.site.values])
    ax.set(xlabel="noise site (index from 0, as --list-sites numbers them)",
           ylabel=_sigma_label(ds, "midpoint "), title="Noise level that halves the way to chance")
    legend(ax)
    rows = [[int(ds.site.values[k]), names[k]] + [str(ms[k]) for ms in mids.values()] for k in range(len(names))]
    header = ["site", "name"] + [f"{label}: midpoint σ [{_sigma_units(ds)}] [95% interval]" for label in mids]
    note = ("Intervals: 95% bootstrap over the repeats. An upper end of inf means that in some resamples the "
            "accuracy never fell to the halfway level within the sweep; the plot then draws no upper bar.")
    if chance_warning(ds):
        note = f"Meaningless here: {chance_warning(ds)}. {note}"
    return Section("Midpoint noise level per site", figure_html(fig, "midpoints", "walk-midpoints")
                   + table_html(rows, header) + text_html(note, "note"))


def _training_sections(ds: xr.Dataset) -> list[Section]:
    fig, ax = new_figure(width=6.4)
    wm = ds.weight_mag.mean("repeat")
    if decode_attrs(ds.attrs)["settings"]["mode"] == "global":
        lines = [(0, layer, f"layer {name}") for layer, name in enumerate(ds.layer.values)]
    else:
        lines = [(k, layer, f"noise at {int(ds.site.values[k])}: layer {ds.layer.values[layer]}")
                 for k, layer in enumerate(layer_before(ds)) if layer is not None]
    clean_wm = ds.clean_weight_mag.mean("repeat")
    for k, layer, label in lines:
        (line,) = ax.plot(ds.sigma.values, wm.isel(site=k, layer=layer).values, marker=".", label=label)
        ax.axhline(float(clean_wm.values[layer]), color=line.get_color(), lw=0.7, ls="--")
    auto_log(ax, ds.sigma.values, axis="x")
    ax.set(xlabel=_sigma_label(ds, "training "), ylabel="mean |W| of the layer before the noise [1]",
           title="dashed: the same layer of the clean model")
    legend(ax)
    binar = ds.binarization.mean(("repeat", "probe"))
    rows = [["clean", "-", float(ds.clean_binarization.mean())]]
    rows += [[int(ds.site.values[k]), float(sig), float(binar.values[k, j])]
             for k in range(ds.sizes["site"]) for j, sig in enumerate(ds.sigma.values)]
    return [Section("Weight magnitude versus training noise", figure_html(fig, "weight magnitude", "walk-weights")),
            Section("Binarisation of activations (fraction within 5% of either end of the range)",
                    table_html(rows, ["noise site", "training sigma", "binarisation"]), collapsed=True)]


def sweep_sections(ds: xr.Dataset) -> list[Section]:
    """The sections for a sweep's HTML page."""
    trained = "accuracy_eval_only" in ds
    variants = [("accuracy_eval_only", "evaluation only"), ("accuracy", "noisy training")] if trained \
        else [("accuracy", "evaluation only")]
    mids = {label: sweep_midpoints(ds, var) for var, label in variants}
    sections = [_accuracy_section(ds, variants), _midpoint_section(ds, mids)]
    return sections + (_training_sections(ds) if trained else [])


def sweep_summary(ds: xr.Dataset) -> list[tuple[str, str]]:
    """The headline numbers of a sweep's page."""
    st = decode_attrs(ds.attrs)["settings"]
    label, var = ("noisy training", "accuracy") if "accuracy_eval_only" in ds else ("evaluation only", "accuracy")
    ms = sweep_midpoints(ds, var)
    reached = [(m.value, k) for k, m in enumerate(ms) if m.reached]
    names = [str(v) for v in ds.site_name.values]
    frail = "no site reached its midpoint within the sweep"
    if reached:
        value, k = min(reached)
        frail = f"site {int(ds.site.values[k])} ({names[k]}), midpoint σ {value:.4g}"
    if chance_warning(ds):
        frail = f"meaningless ({chance_warning(ds)})"
    sig = ds.sigma.values
    return [("model", str(ds.attrs.get("model", st.get("model_def") or "-"))),
            ("data", str(st.get("data"))),
            ("noise", f"{st.get('noise')} ({'correlated' if st.get('correlated') else 'independent'} per element), "
                      f"mode {st.get('mode')}, σ a standard deviation from {sig.min():.3g} to {sig.max():.3g} "
                      f"({len(sig)} levels)"),
            ("sites", f"{ds.sizes['site']} walked, {ds.sizes['repeat']} repeat(s) per point"),
            ("clean accuracy", f"{clean_accuracy(ds):.4f}"),
            (f"most fragile site ({label})", frail),
            ("complete", "yes" if ds.attrs.get("complete") else "no (unfinished points are missing)")]


def write_sweep_report(sweep: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """``hwloop walk report SWEEP.zarr``: the sweep's page."""
    from .sweep import open_sweep

    ds = open_sweep(sweep)
    return write_report(html_path, f"Walking Noise sweep {Path(sweep).name}", sweep_sections(ds),
                        provenance={k: v for k, v in decode_attrs(ds.attrs).items() if k != "sites"},
                        summary=sweep_summary(ds))


def midpoint_lines(ds: xr.Dataset) -> list[str]:
    """One text line per site: its midpoint(s), for the CLI."""
    names = [str(v) for v in ds.site_name.values]
    variants = ["accuracy_eval_only", "accuracy"] if "accuracy_eval_only" in ds else ["accuracy"]
    mids = {v: sweep_midpoints(ds, v) for v in variants}
    what = ds.sigma.attrs.get("long_name", "noise level").removeprefix("Walking Noise strength: ")
    head = (f"clean accuracy {clean_accuracy(ds):.4f}; midpoint sigma per site ({', '.join(variants)}), where "
            f"accuracy is halfway from clean to chance, [95% bootstrap interval over repeats];\n"
            f"sigma: {what} [{_sigma_units(ds)}]")
    ops = {s["name"]: s["op"] for s in decode_attrs(ds.attrs)["sites"]}
    return [head] + [f"{int(ds.site.values[k]):>3}  {ops.get(names[k], 'all sites'):<18} {names[k]:<30} "
                     + "  ".join(f"{str(mids[v][k]):<28}" for v in variants) for k in range(len(names))]
