"""Calibrate a chip: measure it through a designed plan, fit its noise and non-idealities, write its profile.

The chip is named by --resource (a VISA resource, e.g. TCPIP::127.0.0.1::5025::SOCKET)
or by --bench BENCH.yaml --device NAME.  Every measured block is recorded in a
calibration store (--store, default: next to --out) that survives a kill:
continue it with --resume; fit it again without the chip with --refit CAL.zarr.
The profile written to --out is a normal device profile: run a model on the
chip's twin with `hwloop run MODEL --profile PROFILE.yaml`.

`hwloop calibrate diff OLD.yaml NEW.yaml` compares two calibrations of one chip
term by term with their standard errors and says which changes are
significant (exit 0: none, 1: some changed, 2: bad input).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "measure a chip and write the device profile that makes the emulator its twin"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..calibration.plan import DEFAULT_BUDGET
    from ..calibration.precision import PRECISION_BUDGET

    src = p.add_mutually_exclusive_group()
    src.add_argument("--resource", help="VISA resource of the chip's bench controller")
    src.add_argument("--bench", type=Path, help="bench file (YAML) naming the chip (with --device)")
    src.add_argument("--refit", type=Path, metavar="CAL.zarr", help="fit a finished calibration store again, "
                                                                     "without the chip")
    p.add_argument("--device", help="the chip's device name in --bench")
    p.add_argument("--out", type=Path, help="profile to write (PROFILE.yaml; required unless 'diff')")
    p.add_argument("--budget", type=int, default=None,
                   help=f"analog evaluations (repeat x sample) to spend (default: {DEFAULT_BUDGET}); with "
                        f"--target-precision the most to spend (default: {PRECISION_BUDGET:,})")
    p.add_argument("--target-precision", metavar="P", help="measure until every noise intensity's relative "
                   "standard error is at most P (0.01 = 1%%), or per term: D_A=0.01,D_MC=0.05; the plan is "
                   "extended sequentially, designed from the Fisher information of the current estimates")
    p.add_argument("--max-time", type=float, metavar="SECONDS", help="--target-precision: stop extending after "
                                                                     "this much wall time")
    p.add_argument("--dry-run", action="store_true", help="say what would be measured and how long it takes at "
                                                          "the chip's timing, without measuring")
    p.add_argument("--prior", type=Path, metavar="PROFILE.yaml", help="--dry-run --target-precision: an earlier "
                   "calibration of the chip, to predict the extensions too")
    p.add_argument("--seed", type=int, default=0, help="seed (keys an emulated chip's draws; default: 0)")
    p.add_argument("--store", type=Path, help="calibration store (default: OUT with suffix .cal.zarr)")
    p.add_argument("--name", help="name written into the profile (default: calibrated-<serial>)")
    p.add_argument("--report", type=Path, help="write an HTML report of the fits here")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="with --report: also save every figure as SVG and PNG in DIR")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted calibration in --store")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --store")
    _add_diff(p)


def _add_diff(p: argparse.ArgumentParser) -> None:
    from ..calibration.diff import ALPHA

    sub = p.add_subparsers(dest="action", title="subcommand", metavar="diff OLD.yaml NEW.yaml")
    d = sub.add_parser("diff", help="compare two calibrations of one chip term by term",
                       description="Compare two calibrated profiles of one chip term by term, with their standard "
                                   "errors; exit 0 when no term changed significantly, 1 when some did.")
    d.add_argument("old", type=Path, help="earlier calibrated profile (YAML)")
    d.add_argument("new", type=Path, help="later calibrated profile (YAML)")
    d.add_argument("--alpha", type=float, default=ALPHA,
                   help=f"family-wise false-alarm rate over all terms (default: {ALPHA})")


def main(args: argparse.Namespace) -> int:
    from ..calibration import DEFAULT_BUDGET, calibrate, refit
    from ..errors import HwloopError
    from ..progress import Progress

    if args.figures:
        from ..plotting import save_figures

        save_figures(args.figures)
    if getattr(args, "action", None) == "diff":
        from ..calibration.diff import diff_files

        d = diff_files(args.old, args.new, args.alpha)
        print(d.table())
        return 1 if d.changed else 0
    if args.dry_run:
        return _dry_run(args)
    if args.out is None:
        raise HwloopError("calibrate: --out PROFILE.yaml is required")
    if args.out.exists() and not (args.overwrite or args.resume):
        raise HwloopError(f"{args.out}: exists (use --overwrite to replace it)")
    if args.refit:
        prof, fit = refit(args.refit, args.out, name=args.name)
        _summary(prof, fit, args.out, args.report)
        return 0
    store = args.store or args.out.with_suffix(".cal.zarr")
    if store.exists() and not (args.resume or args.overwrite):   # before touching the chip
        raise HwloopError(f"{store}: exists (use --resume to continue that calibration or --overwrite)")
    chip = _chip(args)
    try:
        with Progress(None, "hwloop calibrate", unit="block") as bar:
            progress = bar.callback()
            if args.target_precision:
                return _to_precision(args, chip, store, progress)
            prof, fit, meas = calibrate(chip, args.out, store=store, budget=args.budget or DEFAULT_BUDGET,
                                        seed=args.seed, resume=args.resume, overwrite=args.overwrite, name=args.name,
                                        progress=progress)
    finally:
        chip.device.close()
    _summary(prof, fit, args.out, args.report)
    return 0


def _to_precision(args: argparse.Namespace, chip, store: Path, progress) -> int:
    """``--target-precision``: pilot, then designed extensions; exit 1 when a limit stopped it first."""
    from ..calibration.precision import PRECISION_BUDGET, calibrate_to_precision
    from ..errors import HwloopError

    if args.resume:
        raise HwloopError("calibrate: --resume is not available with --target-precision (start it again; "
                          "the stages measured so far stay in --store)")
    r = calibrate_to_precision(chip, args.out, store=store, targets=args.target_precision,
                               budget=args.budget or PRECISION_BUDGET, max_seconds=args.max_time, seed=args.seed,
                               overwrite=args.overwrite, name=args.name, progress=progress)
    _summary(r.profile, r.fit, args.out, args.report)
    for st in r.stages:
        print(f"  stage {st['stage']}: {st['design']}{'' if st['levels'] is None else ' ' + str(st['levels'])}, "
              f"{st['evaluations']:,} evaluations, {st['bench_s']:.3g} s at the chip's timing")
    print(r.message)
    return 0 if r.reached else 1


def _dry_run(args: argparse.Namespace) -> int:
    """``--dry-run``: the plan and its bench time at the chip's timing, from what the chip reports."""
    from ..calibration.precision import dry_run
    from ..profiles import load_profile

    chip = _chip(args)
    try:
        prior = load_profile(args.prior).data if args.prior else None
        print(dry_run(chip.info, args.target_precision, args.budget, args.seed, prior=prior))
    finally:
        chip.device.close()
    return 0


def _summary(prof, fit, out: Path, report: Path | None) -> None:
    """What was fitted, each value rounded to its standard error with its units, and where it went."""
    from ..calibration.report import fitted_values
    from ..numbers import with_error
    from ..plotting import OUT

    adc = fit.adc
    print(f"profile: {out}  ({prof.provenance.get('instrument', '')})")
    print(f"  {'term':<14} {'value ± standard error':<28} units")
    for k, v, se, unit in fitted_values(fit):
        print(f"  {k:<14} {with_error(v, se):<28} {unit}")
    print("  (noise intensities D are variances; ± one standard error of the fit)")
    print(f"  ADC: {adc.bits_} bits over {list(adc.range_)} {OUT}, clipped {100 * adc.clip_fraction_:.3g}%")
    for mode, r in fit.transfer.results_.items():
        print(f"  {mode}: behaves as {r['function']} slope {with_error(r['slope'], r['slope_stderr'])}, "
              f"scale {with_error(r['scale'], r['scale_stderr'])}  ({r['note']})")
        others = sorted((c["delta_qaic"], fam) for fam, c in r["candidates"].items() if fam != r["function"])
        print("    competing families (quasi-AIC above the chosen): "
              + ", ".join(f"{fam} +{d:.3g}" + ("" if r["candidates"][fam]["status"] == "fits worse"
                                                 else f" [{r['candidates'][fam]['status']}]") for d, fam in others))
    print(f"  noise placement: {fit.placement.placement_}"
          + ("" if fit.placement.identified_ else " (default: no saturating activation to tell)"))
    if fit.drift.significant_:
        print("  " + drift_line(fit.drift))
    if report:
        from ..calibration.report import write_calibration_report

        print(f"report: {write_calibration_report(fit, report, provenance=prof.provenance)}")


def drift_line(drift) -> str:
    """The drift rates with their standard errors and units: offset in output units, gain relative to its mean."""
    from ..numbers import with_error
    from ..plotting import OUT

    parts = [f"offset {with_error(drift.offset_per_s_, drift.offset_per_s_stderr_)} {OUT}/s",
             f"gain {with_error(drift.gain_per_s_, drift.gain_per_s_stderr_)} /s (relative to the mean gain)"]
    if drift.offset_per_K_ or drift.gain_per_K_:
        parts += [f"offset {with_error(drift.offset_per_K_, drift.offset_per_K_stderr_)} {OUT}/K",
                  f"gain {with_error(drift.gain_per_K_, drift.gain_per_K_stderr_)} /K (relative)"]
    return "drift: " + ", ".join(parts)


def _chip(args: argparse.Namespace):
    """The device to calibrate, chosen as every command chooses one (``hwloop.bench.open_device``):
    a chip at --resource, or any device of --bench (its only one, or --device), plug-ins included;
    a bench file's ``capabilities:`` tell the calibration what a plug-in does not report."""
    from ..bench import load_bench, open_device
    from ..calibration import chip_from_device
    from ..errors import HwloopError

    caps = None
    if args.bench:
        bench = load_bench(args.bench)
        name = args.device or bench.only_device()
        spec = bench.devices_spec.get(name)
        if spec is not None and spec.kind == "emulator":
            raise HwloopError(f"{spec.where}: an emulator, not a chip; calibration measures a chip or a plug-in")
        caps = spec.capabilities if spec is not None else None
    # a clipped level is dropped by the fits, not fatal
    device = open_device(args.bench, args.device, resource=args.resource, on_clip="warn")
    try:
        return chip_from_device(device, caps)
    except BaseException:
        device.close()
        raise
