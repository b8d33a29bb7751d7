"""The whole flow on embedded defaults: import -> execute -> record -> analyse.

1. trains the demo MLP on scikit-learn's 8x8 digits and exports it to ONNX;
2. imports it and lists its analog layers;
3. runs it on the emulator under a noisy device profile (Semenova-style by
   default), recording every layer, and predicts the same noise analytically;
4. starts a simulated bench controller (a real SCPI server on 127.0.0.1) and
   runs the first analog layer on its chip over VISA, the rest on the emulator;
5. analyses both runs and writes one HTML report.

Everything lands in ``--out`` (default ``hwloop-demo/``); running it again
replaces what an earlier demo wrote there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole flow on the digits demo model: emulator, simulated bench, analysis, report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("hwloop-demo"), help="folder for everything (default: hwloop-demo)")
    p.add_argument("--profile", default="semenova", help="device profile for the emulator and the simulated chip "
                                                          "(default: semenova)")
    p.add_argument("--repeats", type=int, default=50, help="repetitions per sample (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training and of every draw (default: 0)")
    p.add_argument("--figures", type=Path, metavar="DIR", help="also save every figure as SVG and PNG in DIR")


def main(args: argparse.Namespace) -> int:
    from exporters.demo import train_demo

    from ..graph import format_table, load_model
    from ..numbers import pm
    from ..profiles import load_profile
    from ..report import write_report
    from ..store import open_run

    out: Path = args.out
    profile = load_profile(args.profile)     # every option checked before anything is written
    _make_folder(out)
    if args.figures:
        from ..plotting import save_figures

        save_figures(args.figures)

    step("1. train the demo model on digits and export it to ONNX")
    model_path, _ = train_demo(out / "demo.onnx", seed=args.seed)

    step("2. import: analog layers and digital glue")
    model = load_model(model_path)
    print(format_table(model.table()))

    provenance = {"profile": profile.describe(), "profile_sha256": profile.sha256}
    step(f"3. execute + record on the emulator under profile '{profile.name}' ({args.repeats} repeats)")
    emu_store = out / "emulator.zarr"
    res = _on_emulator(args, model, profile, emu_store, provenance)
    print(f"{pm(res.accuracy)} -> {emu_store}")

    step("4. execute + record with layer 0 on a simulated chip over VISA (SCPI over TCP)")
    bench_store = out / "bench.zarr"
    res_b, idn = _on_chip(args, model, profile, bench_store, provenance)
    print(f"chip {idn}: {pm(res_b.accuracy)} -> {bench_store}")

    step("5. analyse: measured noise per layer against the analytic prediction")
    sections = _analyse(args, model_path, {"emulator": emu_store, "chip + emulator": bench_store})
    report = out / "report.html"
    summary = [("model", f"{model_path} ({len(model.layers)} analog layers)"),
               ("data", f"digits test split ({len(res.labels)} samples), {args.repeats} repetitions each"),
               ("devices", f"run 1: emulator, profile {profile.name}, every layer; run 2: layer 0 on the simulated "
                           f"chip {idn} over VISA, layers 1+ on the emulator"),
               ("accuracy, emulator", pm(res.accuracy)), ("accuracy, chip + emulator", pm(res_b.accuracy)),
               ("stores", f"{emu_store.name}, {bench_store.name} (+ .analysis.nc beside each)")]
    write_report(report, "hwloop demo: the digits MLP on noisy analog devices", sections,
                 provenance=open_run(emu_store).attrs, summary=summary)
    print(f"\nreport: {report}")
    return 0


def _make_folder(out: Path) -> None:
    """Create ``--out`` (one HwloopError line when it is a file or cannot be created)."""
    from ..errors import HwloopError

    if out.exists() and not out.is_dir():
        raise HwloopError(f"{out}: not a folder (demo --out names the folder for everything)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HwloopError(f"{out}: cannot create the demo folder: {e.strerror or e}") from None


def _on_emulator(args: argparse.Namespace, model, profile, emu_store: Path, provenance: dict):
    """Every layer on the emulator under ``profile``, recorded in ``emu_store``."""
    from ..devices.emulator import emulators
    from ..runner import run_model

    return run_model(model, "digits", devices=emulators(profile, model.layers),
                     repeats=args.repeats, seed=args.seed, out=emu_store, overwrite=True, progress=True,
                     provenance=provenance)


def _on_chip(args: argparse.Namespace, model, profile, bench_store: Path, provenance: dict):
    """Layer 0 on a simulated chip over VISA, the rest on the emulator; returns the result and the chip's *IDN?."""
    from ..bench import ChipSpec, SimulatedBench, VisaDevice
    from ..devices.emulator import emulators
    from ..runner import run_model

    # A chip whose weight range holds the demo's weights, so it runs the sigmoid itself
    # (scaled weights would need a linear tile and the activation on the host).
    chip_spec = ChipSpec(weight_range=4.0)
    with SimulatedBench(profile, seed=args.seed, spec=chip_spec) as bench, VisaDevice(bench.resource) as chip:
        devices = emulators(profile, model.layers)
        devices[0] = chip
        res_b = run_model(model, "digits", devices=devices, repeats=args.repeats, seed=args.seed,
                          out=bench_store, overwrite=True, progress=True, provenance=provenance)
        idn = chip.describe().get("idn", bench.resource)
    return res_b, idn


def _analyse(args: argparse.Namespace, model_path: Path, stores: dict[str, Path]) -> list:
    """Measured noise per layer against the prediction, for each run: printed, saved beside it, as report sections."""
    from ..analysis.measured import analyze_run, layer_table, save_analysis
    from ..analysis.predict import predict_for_run
    from ..report import Section, analysis_sections, text_html
    from ..store import open_run
    from .analyze import default_analysis_path

    sections = []
    for title, store in stores.items():
        run = open_run(store)
        measured = analyze_run(run)
        predicted = predict_for_run(run, model=model_path, profile=args.profile, data="digits")
        save_analysis(measured, default_analysis_path(store))
        print(f"-- {title} ({store.name})")
        print(layer_table(measured, predicted))
        sections.append(Section(f"Run on {title}", text_html(f"store: {store}")))
        sections.extend(analysis_sections(measured, predicted))
    return sections


def step(text: str) -> None:
    """A numbered heading, so the output reads as the flow it walks through."""
    print(f"\n== {text}", flush=True)
