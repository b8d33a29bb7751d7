"""Calibrate a chip: measure it through a designed plan, fit its noise and non-idealities, write its profile.

The chip is named by --resource (a VISA resource, e.g. TCPIP::127.0.0.1::5025::SOCKET)
or by --bench BENCH.yaml --device NAME.  Every measured block is recorded in a
calibration store (--store, default: next to --out) that survives a kill:
continue it with --resume; fit it again without the chip with --refit CAL.zarr.
The profile written to --out is a normal device profile: run a model on the
chip's twin with `hwloop run MODEL --profile PROFILE.yaml`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "measure a chip and write the device profile that makes the emulator its twin"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..calibration.plan import DEFAULT_BUDGET

    src = p.add_mutually_exclusive_group()
    src.add_argument("--resource", help="VISA resource of the chip's bench controller")
    src.add_argument("--bench", type=Path, help="bench file (YAML) naming the chip (with --device)")
    src.add_argument("--refit", type=Path, metavar="CAL.zarr", help="fit a finished calibration store again, "
                                                                     "without the chip")
    p.add_argument("--device", help="the chip's device name in --bench")
    p.add_argument("--out", type=Path, required=True, help="profile to write (PROFILE.yaml)")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                   help=f"analog evaluations (repeat x sample) to spend (default: {DEFAULT_BUDGET})")
    p.add_argument("--seed", type=int, default=0, help="seed (keys an emulated chip's draws; default: 0)")
    p.add_argument("--store", type=Path, help="calibration store (default: OUT with suffix .cal.zarr)")
    p.add_argument("--name", help="name written into the profile (default: calibrated-<serial>)")
    p.add_argument("--report", type=Path, help="write an HTML report of the fits here")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="with --report: also save every figure as SVG and PNG in DIR")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted calibration in --store")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --store")


def main(args: argparse.Namespace) -> int:
    from ..calibration import calibrate, open_chip, refit
    from ..errors import HwloopError

    if args.figures:
        from ..plotting import save_figures

        save_figures(args.figures)
    if args.out.exists() and not (args.overwrite or args.resume):
        raise HwloopError(f"{args.out}: exists (use --overwrite to replace it)")
    if args.refit:
        prof, fit = refit(args.refit, args.out, name=args.name)
        _summary(prof, fit, args.out, args.report)
        return 0
    if args.bench and not args.device:
        raise HwloopError("calibrate: --bench needs --device NAME (the chip to calibrate)")
    store = args.store or args.out.with_suffix(".cal.zarr")
    if store.exists() and not (args.resume or args.overwrite):   # before touching the chip
        raise HwloopError(f"{store}: exists (use --resume to continue that calibration or --overwrite)")
    chip = open_chip(args.resource, str(args.bench) if args.bench else None, args.device)
    try:
        from ..progress import Progress

        with Progress(None, "hwloop calibrate", unit="block") as bar:
            prof, fit, meas = calibrate(chip, args.out, store=store, budget=args.budget, seed=args.seed,
                                        resume=args.resume, overwrite=args.overwrite, name=args.name,
                                        progress=bar.callback())
    finally:
        chip.device.close()
    _summary(prof, fit, args.out, args.report)
    return 0


def _summary(prof, fit, out: Path, report: Path | None) -> None:
    """What was fitted, with one standard error, and where it went (and the HTML report, when asked)."""
    nf, go, adc = fit.noise, fit.gain_offset, fit.adc
    print(f"profile: {out}  ({prof.provenance.get('instrument', '')})")
    print(f"  {'term':<8} {'value':>12} {'stderr':>12}")
    for k, v in nf.intensities_.items():
        if k == "shot" and not nf.shot_fitted_:
            continue
        print(f"  {k:<8} {v:>12.5g} {nf.stderr_[k]:>12.3g}")
    print(f"  gain spread {go.gain_spread_:.4g} +- {go.gain_spread_stderr_:.2g}, "
          f"offset spread {go.offset_spread_:.4g} +- {go.offset_spread_stderr_:.2g}")
    print(f"  ADC step {adc.step_:.6g} ({adc.bits_} bits over {list(adc.range_)}), "
          f"clipped {100 * adc.clip_fraction_:.3g}%")
    for mode, r in fit.transfer.results_.items():
        print(f"  {mode}: behaves as {r['function']} slope {r['slope']:.4g} +- {r['slope_stderr']:.2g}, "
              f"scale {r['scale']:.4g} +- {r['scale_stderr']:.2g}")
    print(f"  noise placement: {fit.placement.placement_}"
          + ("" if fit.placement.identified_ else " (default: no saturating activation to tell)"))
    if fit.drift.significant_:
        print(f"  drift: offset {fit.drift.offset_per_s_:.3g}/s, gain {fit.drift.gain_per_s_:.3g}/s")
    if report:
        from ..calibration.report import write_calibration_report

        print(f"report: {write_calibration_report(fit, report, provenance=prof.provenance)}")
