"""Validate a calibrated profile: run a model on the chip and on the profile's emulator, compare per layer.

Every analog layer runs on the chip (--resource, or --bench BENCH.yaml
[--device NAME], any device a bench file can name) and, separately, on the
emulator with PROFILE; per layer the mean noise variance, the median SNR and
the common-mode share are compared, and the accuracy.  Exit status 0 when
every check is within its tolerance, 1 when not (2: bad input).

With --terms (no model; for scheduled runs) the chip is calibrated again with
a short plan (--budget) and every fitted term is compared with PROFILE's: a
term FAILs when it changed significantly (family-wise false-alarm rate
--alpha), one line per term, exit 0 when every term passes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare a model on a chip and on its calibrated twin (exit 0: pass, 1: fail)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..calibration.validate import Tolerances

    t = Tolerances()
    p.add_argument("profile", nargs="?", help="calibrated device profile (YAML path or name; default: the "
                                              "bench device's twin:)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--resource", help="VISA resource of the chip's bench controller")
    src.add_argument("--bench", type=Path, help="bench file (YAML) naming the chip (with --device)")
    p.add_argument("--device", help="the chip's device name in --bench (default: its only device)")
    p.add_argument("--model", type=Path, help="ONNX model file (required unless --terms)")
    p.add_argument("--terms", action="store_true", help="no model: calibrate again (--budget) and check every "
                                                        "term of PROFILE for a significant change")
    p.add_argument("--budget", type=int, default=50_000, help="--terms: evaluations of the new calibration "
                                                              "(default: 50000)")
    p.add_argument("--alpha", type=float, default=0.01, help="--terms: family-wise false-alarm rate (default: 0.01)")
    p.add_argument("--data", default="digits", help="data spec (default: digits)")
    p.add_argument("--repeats", type=int, default=20, help="repetitions per sample (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the twin's draws (default: 0)")
    p.add_argument("--report", type=Path, help="write an HTML report here")
    p.add_argument("--tol-variance", type=float, default=t.variance,
                   help=f"relative per-layer variance tolerance (default: {t.variance})")
    p.add_argument("--tol-accuracy", type=float, default=t.accuracy,
                   help=f"accuracy tolerance as a fraction (default: {t.accuracy} = 1 point)")
    p.add_argument("--tol-snr-db", type=float, default=t.snr_db, help=f"SNR tolerance in dB (default: {t.snr_db})")
    p.add_argument("--tol-cm", type=float, default=t.cm_share,
                   help=f"common-mode share tolerance (default: {t.cm_share})")


def main(args: argparse.Namespace) -> int:
    from ..bench import layer_devices
    from ..calibration.validate import Tolerances, validate, write_validation_report
    from ..graph import load_model
    from ..profiles import load_profile

    profile = load_profile(args.profile or _twin(args))
    if args.terms:
        return _terms(args, profile)
    if args.model is None:
        from ..errors import HwloopError

        raise HwloopError("validate: --model is required (or --terms to check the calibrated terms)")
    model = load_model(args.model)
    tol = Tolerances(args.tol_variance, args.tol_accuracy, args.tol_snr_db, args.tol_cm)
    # clipping is part of what the twin must reproduce: warn, do not stop
    devices = layer_devices(model, args.bench, args.device, resource=args.resource, on_clip="warn")
    try:
        v = validate(profile, devices, model, args.data, repeats=args.repeats, seed=args.seed, tolerances=tol)
    finally:
        for d in {id(d): d for d in devices.values()}.values():
            d.close()
    print(v.table())
    if args.report:
        print(f"report: {write_validation_report(v, args.report)}")
    return 0 if v.passed else 1


def _terms(args: argparse.Namespace, profile) -> int:
    """Calibrate the chip again and check every term of ``profile``; exit 1 when one changed."""
    from ..calibration.validate import validate_terms
    from .calibrate import _chip

    chip = _chip(args)
    try:
        d = validate_terms(profile, chip, budget=args.budget, seed=args.seed, alpha=args.alpha)
    finally:
        chip.device.close()
    print(d.table())
    return 1 if d.changed else 0


def _twin(args: argparse.Namespace) -> str:
    """The calibrated profile a bench file names for the device (``twin:``), when no PROFILE is given."""
    from ..bench import load_bench
    from ..errors import HwloopError

    if args.bench:
        bench = load_bench(args.bench)
        spec = bench.devices_spec.get(args.device or bench.only_device())
        if spec is not None and spec.twin:
            return spec.twin
    raise HwloopError("validate: give the calibrated PROFILE (or a twin: for the device in --bench)")
