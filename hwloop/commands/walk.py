"""Walking Noise: which site of a model is most fragile, how much noise it takes, what helps.

  hwloop walk MODEL.onnx --list-sites
  hwloop walk MODEL.onnx --sigmas logspace:1e-2:1e8:41 --data digits --repeats 3 --out SWEEP.zarr
  hwloop walk MODEL.onnx --bench BENCH.yaml --sites 4 --sigmas 0.01,0.1,1 --out SWEEP.zarr   (chips in the loop)
  hwloop walk --train-noise --model-def tfc --epochs 5 --sigmas 0.1,1,10 --out SWEEP.zarr [--workers 2]
  hwloop walk report SWEEP.zarr --report walk.html
  hwloop walk plan SWEEP.zarr --budget 24 --sigma 0.5

A sweep resumes where it stopped when run again with the same --out and settings.

Noise strength: --sigmas are standard deviations s of the injected Gaussian
noise (additive x + N(0, s^2), multiplicative x * N(1, s^2)), not variances.
Device profiles and `hwloop predict` use variances D (D_A = s^2 for additive
noise).  `hwloop walk report --help` and `hwloop walk plan --help` describe the
two actions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "Walking Noise sweeps: per-site robustness, noisy training, repetition planning"


#: the actions after MODEL's place: name -> (description, [(flags, help)])
ACTIONS = {
    "report": ("Write the HTML page of a finished (or partial) sweep: accuracy against sigma per site with the "
               "spread over repeats, the midpoint sigma of every site with its interval, and, for --train-noise "
               "sweeps, weight growth and binarisation. sigma is a standard deviation (not a variance D).",
               [("SWEEP.zarr", "the sweep store"), ("--report OUT.html", "where to write it (default: SWEEP.html)"),
                ("--figures DIR", "also save every figure as SVG and PNG in DIR")]),
    "plan": ("Share a budget of executions among the sites of an evaluation-only walking sweep: each "
             "allocation scheme gives every site k_i >= 1 repetitions (averaging k noisy executions divides "
             "additive noise by sqrt(k)), and is evaluated under global noise of standard deviation --sigma. "
             "Prints one line per scheme and recommends the most accurate.",
             [("SWEEP.zarr", "the sweep store"), ("--budget B", "total executions to share (required)"),
              ("--sigma S", "global noise standard deviation to evaluate at (required)"),
              ("--repeats R", "noise draws per scheme (default: 1)"), ("--seed N", "seed of the draws")]),
}


class _Help(argparse._HelpAction):
    """-h/--help: the help of ``walk report`` or ``walk plan`` when that action was named, else walk's own."""

    def __call__(self, parser, namespace, values, option_string=None):
        action = (getattr(namespace, "target", None) or [None])[0]
        if action in ACTIONS:
            from ..cli import help_text

            text, args = ACTIONS[action]
            usage = " ".join(a if a.startswith("SWEEP") or "required" in h else f"[{a}]" for a, h in args)
            print(f"usage: hwloop walk {action} {usage}\n\n{help_text(text)}\n\narguments:")
            print("\n".join(f"  {a:<20} {h}" for a, h in args))
        else:
            parser.print_help()
        parser.exit()


def add_arguments(p: argparse.ArgumentParser) -> None:
    for action in p._actions:                # argparse's -h/--help learns about the actions (see _Help)
        if isinstance(action, argparse._HelpAction):
            action.__class__ = _Help
    p.add_argument("target", nargs="*", metavar="MODEL | report SWEEP | plan SWEEP",
                   help="ONNX model (evaluation-only), or 'report SWEEP.zarr', or 'plan SWEEP.zarr'")
    p.add_argument("--list-sites", action="store_true", help="print the model's numbered injection sites and exit")
    p.add_argument("--noise", default="additive", help="additive | multiplicative | combined (default additive)")
    p.add_argument("--ratio", type=float, default=0.5, help="combined noise: additive share r (default 0.5)")
    p.add_argument("--correlated", action="store_true", help="one draw per sample shared by a site's neurons")
    p.add_argument("--sigmas", default="logspace:1e-2:1e8:41",
                   help="noise standard deviations (not variances): logspace:A:B:N, linspace:A:B:N or a comma "
                        "list (default logspace:1e-2:1e8:41)")
    p.add_argument("--mode", default="walk", help="walk (one site at a time) | global (all sites)")
    p.add_argument("--sites", help="walk only these site indices, e.g. 0,7 (default: all)")
    p.add_argument("--data", default="digits", help="evaluation data spec (default digits)")
    p.add_argument("--repeats", type=int, default=1, help="repeats per point (noise draws / trained models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="sweep store (SWEEP.zarr); resumed when it exists")
    p.add_argument("--train-noise", action="store_true", help="train a torch model per point with the same noise")
    p.add_argument("--model-def", help="torch model: tfc, tfc-bn, mlp, cnn, lenet5, lenet5-bn or module:factory")
    p.add_argument("--train-data", help="training data spec (default: the training split of --data)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--clamp", type=float, help="clamp weights to [-C, C] after every optimiser step")
    p.add_argument("--scheduler", help="existing Dask scheduler tcp://HOST:PORT")
    p.add_argument("--workers", type=int,
                   help="local Dask cluster of N single-threaded workers (0: in this process); default: one "
                        "per core for --train-noise sweeps, in this process for evaluation-only sweeps, "
                        "whose points are too short to pay for a cluster")
    p.add_argument("--bench", type=Path, help="bench file: its layers run on their devices (chips) while the walk "
                                              "visits --sites (outputs of the other analog layers; default: all "
                                              "of them); evaluation-only")
    p.add_argument("--report", type=Path, help="write the sweep's HTML report here")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="with --report: also save every figure as SVG and PNG in DIR")
    p.add_argument("--budget", type=int, help="plan: total executions to share among the sites")
    p.add_argument("--sigma", type=float, help="plan: global noise level to evaluate the allocations at")


def main(args: argparse.Namespace) -> int:
    from ..errors import HwloopError

    target = list(args.target)
    if args.figures:
        from ..plotting import save_figures

        save_figures(args.figures)
    if target[:1] == ["report"]:
        return _report(target, args)
    if target[:1] == ["plan"]:
        return _plan(target, args)
    if len(target) > 1:
        raise HwloopError(f"expected one MODEL, got {' '.join(target)}")
    model = Path(target[0]) if target else None
    if args.list_sites:
        if model is None:
            raise HwloopError("--list-sites needs an ONNX model")
        from ..walking.sites import load_onnx, onnx_sites, site_table

        print(site_table(onnx_sites(load_onnx(model))))
        return 0
    if args.out is None:
        raise HwloopError("--out SWEEP.zarr is required for a sweep")
    from ..walking.plots import midpoint_lines, write_sweep_report
    from ..walking.sweep import SweepSettings, open_sweep, parse_sigmas, run_sweep

    settings = SweepSettings(
        sigmas=parse_sigmas(args.sigmas), noise=args.noise, mode=args.mode, data=args.data,
        repeats=args.repeats, seed=args.seed, ratio=args.ratio, correlated=args.correlated,
        train_noise=args.train_noise, model_def=args.model_def, train_data=args.train_data,
        epochs=args.epochs, clamp=args.clamp, sites=_sites(args.sites))
    workers = args.workers
    if workers is None and args.train_noise and not args.scheduler:
        workers = os.cpu_count() or 1
    from ..progress import Progress

    with Progress(None, "hwloop walk", unit="point") as bar:
        run_sweep(settings, args.out, model, scheduler=args.scheduler, workers=workers or None,
                  progress=bar.callback(), bench=args.bench)
    ds = open_sweep(args.out)
    _warn_at_chance(ds)
    print("\n".join(midpoint_lines(ds)))
    print(f"sweep written to {args.out}")
    if args.report:
        write_sweep_report(args.out, args.report)
        print(f"report written to {args.report}")
    return 0


def _warn_at_chance(ds) -> None:
    """One line on stderr when the sweep's clean accuracy is at chance (its midpoints mean nothing)."""
    import sys

    from ..walking.plots import chance_warning

    if (warning := chance_warning(ds)) is not None:
        print(f"hwloop walk: warning: {warning}", file=sys.stderr)


def _sites(text: str | None) -> tuple[int, ...] | None:
    from ..errors import HwloopError

    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise HwloopError(f"--sites {text!r}: expected comma-separated site indices, e.g. 0,7") from None


def _report(target: list[str], args: argparse.Namespace) -> int:
    from ..errors import HwloopError
    from ..walking.plots import write_sweep_report
    from ..walking.sweep import open_sweep

    if len(target) != 2:
        raise HwloopError("usage: hwloop walk report SWEEP.zarr [--report walk.html]")
    out = args.report or Path(target[1]).with_suffix(".html")
    _warn_at_chance(open_sweep(target[1]))
    write_sweep_report(target[1], out)
    print(f"report written to {out}")
    return 0


def _plan(target: list[str], args: argparse.Namespace) -> int:
    from ..errors import HwloopError
    from ..walking.planner import plan_from_sweep

    if len(target) != 2 or args.budget is None or args.sigma is None:
        raise HwloopError("usage: hwloop walk plan SWEEP.zarr --budget B --sigma S [--repeats R]")
    from ..walking.planner import plan_lines
    from ..walking.sweep import open_sweep

    results = plan_from_sweep(target[1], args.budget, args.sigma, repeats=args.repeats, seed=args.seed)
    _warn_at_chance(open_sweep(target[1]))
    print("\n".join(plan_lines(results, args.budget, args.sigma, args.repeats)))
    return 0
