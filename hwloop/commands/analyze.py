"""Noise statistics of a recorded run: per-layer variance, SNR, common-mode split, accuracy.

Writes the results next to the run (RUN.analysis.nc) and prints a table;
--report adds a self-contained HTML page, --predict overlays the analytic
prediction (model, profile and data taken from the run's provenance unless
given).

Units: variances in output units^2 (the profile's D are variances too; walk's
sigma is a standard deviation); SNR in dB.  Accuracy is printed as mean ± the
standard error of the mean over repetitions.  The add/mult columns fit
var = add + mult * mean^2 with one standard error; they are meaningful only
where the device injects noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "analyse a run: noise per layer, SNR, common-mode split, accuracy (and the prediction)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run store (RUN.zarr)")
    p.add_argument("--out", type=Path, help="where to write the analysis (default: RUN.analysis.nc)")
    p.add_argument("--report", type=Path, help="write a self-contained HTML report here")
    p.add_argument("--predict", action="store_true", help="also compute the analytic prediction and compare")
    p.add_argument("--model", type=Path, help="ONNX model for --predict (default: from the run's provenance)")
    p.add_argument("--profile", help="device profile for --predict (default: from the run's provenance)")
    p.add_argument("--data", help="data spec for --predict (default: from the run's provenance)")
    p.add_argument("--shot", action="store_true", help="fit a shot-noise |mean| term in the variance-vs-signal fit")
    p.add_argument("--figures", type=Path, metavar="DIR", help="with --report: also save every figure (SVG, PNG)")


def main(args: argparse.Namespace) -> int:
    from ..analysis.measured import analyze_run, layer_table, save_analysis
    from ..analysis.predict import predict_for_run
    from ..store import open_run, reading

    run = open_run(args.run)
    with reading(args.run):
        ds = analyze_run(run, shot=args.shot)
        pred = None
        if args.predict:
            from ..progress import step

            with step(f"hwloop analyze: analytic prediction for {args.run}"):
                pred = predict_for_run(run, model=args.model, profile=args.profile, data=args.data)
    out = args.out or default_analysis_path(args.run)
    save_analysis(ds, out)
    print(layer_table(ds, pred))
    if pred is not None:
        print("predicted with, per layer: " + "; ".join(f"{k}: {d}" for k, d in enumerate(pred.attrs["devices"])))
    print(f"analysis written to {out}")
    if args.report:
        from ..numbers import pm
        from ..plotting import save_figures
        from ..report import analysis_sections, devices_text, write_report

        save_figures(args.figures)
        summary = [("run", f"{args.run} ({'complete' if run.complete else 'partial'}; "
                           f"{len(run.layer_names)} analog layers, {ds.attrs.get('repeats')} repetitions)"),
                   ("devices", devices_text(run.attrs.get("devices", [])))]
        if "accuracy" in ds:
            summary.append(("accuracy", pm(ds["accuracy"].values)))
        write_report(args.report, f"hwloop analysis of {args.run.name}",
                     analysis_sections(ds, pred) + _device_sections(pred), provenance=run.attrs, summary=summary)
        print(f"report written to {args.report}")
    return 0


def default_analysis_path(run: Path) -> Path:
    """RUN.zarr -> RUN.analysis.nc (beside the run)."""
    run = Path(run)
    stem = run.name[:-5] if run.name.endswith(".zarr") else run.name
    return run.with_name(stem + ".analysis.nc")


def _device_sections(pred) -> list:
    """A report section saying which device ran which layer, and what described it for the prediction."""
    if pred is None:
        return []
    from ..report import Section, table_html

    rows = [[k, str(pred["layer_name"].values[k]), d] for k, d in enumerate(pred.attrs["devices"])]
    return [Section("Devices per layer", table_html(rows, ["#", "layer", "device (description used)"]))]
