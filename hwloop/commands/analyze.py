"""Noise statistics of a recorded run: per-layer variance, SNR, common-mode split, accuracy.

Writes the results next to the run (RUN.analysis.nc) and prints a table;
--report adds a self-contained HTML page, --predict overlays the analytic
prediction (model, profile and data taken from the run's provenance unless
given).
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


def main(args: argparse.Namespace) -> int:
    from ..analysis.measured import analyze_run, layer_table, save_analysis
    from ..analysis.predict import predict_for_run
    from ..store import open_run, reading

    run = open_run(args.run)
    with reading(args.run):
        ds = analyze_run(run, shot=args.shot)
        pred = predict_for_run(run, model=args.model, profile=args.profile, data=args.data) if args.predict else None
    out = args.out or default_analysis_path(args.run)
    save_analysis(ds, out)
    print(layer_table(ds, pred))
    print(f"analysis written to {out}")
    if args.report:
        from ..report import analysis_sections, write_report

        write_report(args.report, f"hwloop analysis of {args.run.name}", analysis_sections(ds, pred),
                     provenance=run.attrs)
        print(f"report written to {args.report}")
    return 0


def default_analysis_path(run: Path) -> Path:
    """RUN.zarr -> RUN.analysis.nc (beside the run)."""
    run = Path(run)
    stem = run.name[:-5] if run.name.endswith(".zarr") else run.name
    return run.with_name(stem + ".analysis.nc")
