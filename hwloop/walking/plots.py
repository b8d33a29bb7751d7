"""Report sections of a sweep: accuracy vs sigma per site, midpoints, weight growth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from ..report import Section, figure_html, new_figure, table_html, write_report
from .midpoint import Midpoint, midpoint


def clean_accuracy(ds: xr.Dataset) -> float:
    """The clean accuracy the midpoints are measured from (mean over clean models when trained)."""
    if "clean_accuracy" in ds:
        return float(np.nanmean(ds.clean_accuracy.values))
    return float(ds.attrs["clean_accuracy"])


def sweep_midpoints(ds: xr.Dataset, var: str = "accuracy", seed: int = 0) -> list[Midpoint]:
    """Midpoint per site of ``var`` (``accuracy`` or ``accuracy_eval_only``)."""
    clean = clean_accuracy(ds)
    return [midpoint(ds.sigma.values, ds[var].isel(site=k).values, clean, int(ds.attrs["n_classes"]), seed=seed)
            for k in range(ds.sizes["site"])]


def layer_before(ds: xr.Dataset) -> list[int | None]:
    """Per site, the index of the last product layer at or before it (None for the input)."""
    names = [s["name"] for s in ds.attrs["sites"]]
    layers = [str(v) for v in ds.layer.values]
    out, last = [], None
    for n in names:
        if n in layers:
            last = layers.index(n)
        out.append(last)
    return [out[int(k)] for k in ds.site.values]


def sweep_sections(ds: xr.Dataset) -> list[Section]:
    """The sections for a sweep's HTML page."""
    trained = "accuracy_eval_only" in ds
    variants = [("accuracy_eval_only", "evaluation only"), ("accuracy", "noisy training")] if trained \
        else [("accuracy", "evaluation only")]
    names = [str(v) for v in ds.site_name.values]
    sections = []
    fig, axes = new_figure(ncols=len(variants))
    axes = np.atleast_1d(axes).ravel()
    for ax, (var, label) in zip(axes, variants):
        m = ds[var].mean("repeat")
        for k, name in enumerate(names):
            ax.plot(ds.sigma.values, m.isel(site=k).values, marker=".", label=f"{int(ds.site.values[k])}: {name}")
        ax.set_xscale("log" if np.all(ds.sigma.values > 0) else "linear")
        ax.axhline(1.0 / int(ds.attrs["n_classes"]), color="grey", lw=0.5, ls="--")
        ax.set(xlabel="sigma", ylabel="accuracy", title=label)
    axes[0].legend(fontsize=6)
    sections.append(Section("Accuracy versus noise per site", figure_html(fig, "accuracy vs sigma")))

    mids = {label: sweep_midpoints(ds, var) for var, label in variants}
    fig, ax = new_figure(width=8)
    width = 0.8 / len(mids)
    top = max([m.value for ms in mids.values() for m in ms if m.reached] + [float(ds.sigma.max())])
    for j, (label, ms) in enumerate(mids.items()):
        vals = [m.value if m.reached else top for m in ms]
        err = np.array([[max(m.value - m.lo, 0), max(m.hi - m.value, 0)] if m.reached and np.isfinite(m.hi)
                        else [0, 0] for m in ms]).T
        ax.bar(np.arange(len(ms)) + j * width, vals, width, yerr=err, label=label)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)), [str(int(k)) for k in ds.site.values])
    ax.set(xlabel="site", ylabel="midpoint sigma (bars at the top: not reached)")
    ax.legend()
    rows = [[int(ds.site.values[k]), names[k]] + [str(ms[k]) for ms in mids.values()] for k in range(len(names))]
    sections.append(Section("Midpoint noise level per site",
                            figure_html(fig, "midpoints") + table_html(rows, ["site", "name"] + list(mids))))

    if trained:
        fig, ax = new_figure()
        wm = ds.weight_mag.mean("repeat")
        if ds.attrs["settings"]["mode"] == "global":
            lines = [(0, layer, f"layer {name}") for layer, name in enumerate(ds.layer.values)]
        else:
            lines = [(k, layer, f"noise at {int(ds.site.values[k])}: layer {ds.layer.values[layer]}")
                     for k, layer in enumerate(layer_before(ds)) if layer is not None]
        clean_wm = ds.clean_weight_mag.mean("repeat")
        for k, layer, label in lines:
            (line,) = ax.plot(ds.sigma.values, wm.isel(site=k, layer=layer).values, marker=".", label=label)
            ax.axhline(float(clean_wm.values[layer]), color=line.get_color(), lw=0.7, ls="--")
        ax.set_xscale("log" if np.all(ds.sigma.values > 0) else "linear")
        ax.set(xlabel="training sigma", ylabel="mean |W| of the layer before the noise",
               title="dashed: the same layer of the clean model")
        ax.legend(fontsize=6)
        sections.append(Section("Weight magnitude versus training noise", figure_html(fig, "weight magnitude")))
        binar = ds.binarization.mean(("repeat", "probe"))
        rows = [["clean", "-", float(ds.clean_binarization.mean())]]
        rows += [[int(ds.site.values[k]), float(sig), float(binar.values[k, j])]
                 for k in range(ds.sizes["site"]) for j, sig in enumerate(ds.sigma.values)]
        sections.append(Section("Binarisation of activations (fraction within 5% of either end of the range)",
                                table_html(rows, ["noise site", "training sigma", "binarisation"])))
    return sections


def write_sweep_report(sweep: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """``hwloop walk report SWEEP.zarr``: the sweep's page."""
    from .sweep import open_sweep

    ds = open_sweep(sweep)
    return write_report(html_path, f"Walking Noise sweep {Path(sweep).name}", sweep_sections(ds),
                        provenance={k: v for k, v in ds.attrs.items() if k != "sites"})


def midpoint_lines(ds: xr.Dataset) -> list[str]:
    """One text line per site: its midpoint(s), for the CLI."""
    names = [str(v) for v in ds.site_name.values]
    variants = ["accuracy_eval_only", "accuracy"] if "accuracy_eval_only" in ds else ["accuracy"]
    mids = {v: sweep_midpoints(ds, v) for v in variants}
    head = f"clean accuracy {clean_accuracy(ds):.4f}; midpoint sigma per site ({', '.join(variants)}):"
    ops = {s["name"]: s["op"] for s in ds.attrs["sites"]}
    return [head] + [f"{int(ds.site.values[k]):>3}  {ops.get(names[k], 'all sites'):<18} {names[k]:<30} "
                     + "  ".join(f"{str(mids[v][k]):<28}" for v in variants) for k in range(len(names))]
