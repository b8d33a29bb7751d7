"""CI gate: do MODELs survive the device PROFILEs?  Exit 0 pass, 1 fail, 3 undecided (2: bad input).

Each model is run on the emulator under each profile, a few repeats at a
time (4, 8, 16, ... up to --max-repeats), until every bar is decided at the
chosen --confidence: pass when the confidence bound on the passing side
clears the bar, fail when the other bound is beyond it, undecided when
--max-repeats is reached first.  The bounds account for repeated noisy
evaluations of the same samples; --scope population (default) claims the
result for new samples like these, --scope dataset for exactly these
samples.  Statistics and assumptions: docs/check.md.

Bars (several at once; all must pass):
  --min-accuracy 0.9     noisy accuracy at least 0.9
  --max-drop 0.02        at most 2 points below the same model noise-free
  --max-flip-rate 0.05   at most 5% of predictions change under noise
  --class-min 3=0.8      accuracy on class 3 at least 0.8 (repeatable)
  --metric rmse --max-increase 0.1   regressors (npz data with float y)

Examples:
  hwloop check demo.onnx --profile crossbar --max-drop 0.02 --junit out.xml
  hwloop check a.onnx b.onnx --profile semenova,crossbar,optical --max-drop 0.02 \\
      --workers 2 --junit out.xml --markdown summary.md
  hwloop check demo.onnx --profile semenova --min-accuracy 0.85 --analytic
  hwloop check demo.onnx --profile semenova --max-drop 0.01 --workers 2   # one pair's batches on Dask

--analytic decides without sampling: the chip programmed from --seed (its
static weight, gain/offset, DAC and transfer errors, exactly as sampling
programs it) plus the predicted covariance of the fresh noise, Gaussian
logits through the last ADC (docs/check.md: what it assumes, how close it is).

Results are cached by (model, profile, data, seed, settings) in
$HWLOOP_CACHE_DIR or ~/.cache/hwloop/check (--no-cache to skip).  Under
GitHub Actions (GITHUB_ACTIONS=true) the checks that do not pass become
annotations, and the Markdown table goes to the job summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "CI gate: do the models keep their bars under device profiles? (exit 0 pass, 1 fail, 3 undecided)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL.onnx")
    p.add_argument("--profile", action="append", metavar="PROFILE",
                   help="profile file or bare name (e.g. semenova); repeat it or give a comma list for a matrix")
    p.add_argument("--bench", type=Path, help="bench file: every layer on one of its devices (--device; a chip "
                                              "or a plug-in), in this process, results not cached")
    p.add_argument("--device", help="with --bench: the device name in the bench file (default: its only device); "
                                    "without: where the sampled checks' emulators compute, cpu (the default "
                                    "numbers) or cuda[:N] (torch on a GPU)")
    p.add_argument("--data", default="digits", help="data spec (default: digits)")
    bars = p.add_argument_group("bars (several at once)")
    bars.add_argument("--min-accuracy", type=float, help="required noisy accuracy in [0, 1]")
    bars.add_argument("--max-drop", type=float, help="largest accuracy drop below noise-free, in [0, 1]")
    bars.add_argument("--max-flip-rate", type=float, help="largest share of predictions changed by noise")
    bars.add_argument("--class-min", action="append", metavar="CLASS=MIN", help="per-class accuracy minimum")
    bars.add_argument("--metric", default="accuracy", choices=("accuracy", "rmse", "mae"),
                      help="regressors: rmse or mae, with --max-increase")
    bars.add_argument("--max-increase", type=float, help="largest increase of the --metric over noise-free")
    st = p.add_argument_group("statistics")
    st.add_argument("--confidence", type=float, default=0.95, help="confidence of each decision (default: 0.95)")
    st.add_argument("--scope", default="population", choices=("population", "dataset"),
                    help="the claim is about new samples like these (default) or exactly these samples")
    st.add_argument("--max-repeats", type=int, default=100, help="most repeats before undecided (default: 100)")
    st.add_argument("--repeats", type=int, default=None, help="a fixed number of repeats, one look (no early stop)")
    st.add_argument("--analytic", action="store_true",
                    help="screen without sampling: the programmed chip's static errors exactly, the fresh "
                         "noise from the predicted covariance of the logits")
    st.add_argument("--compare", action="store_true",
                    help="with --analytic: also sample every pair on the same data (--repeats, else --max-repeats "
                         "repeats) and print how the screen compares, bar by bar")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="run the pairs on a local Dask cluster of N processes "
                                                              "(a single pair: its looks' batches)")
    p.add_argument("--scheduler", default=None, help="run the pairs on a Dask scheduler (tcp://HOST:PORT; a single "
                                                     "pair: its looks' batches)")
    p.add_argument("--junit", metavar="OUT.xml", help="write a JUnit XML report (one test case per pair)")
    p.add_argument("--markdown", metavar="OUT.md", help="write a Markdown summary table")
    p.add_argument("--cache", metavar="DIR", default=None, help="result cache folder")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached results")


def main(args: argparse.Namespace) -> int:
    from ..check.bars import Bars, parse_class_min
    from ..check.matrix import Settings, default_cache_dir, run_matrix
    from ..check.outputs import markdown, publish, write_junit
    from ..files import atomic_path

    if args.compare and (not args.analytic or args.bench):
        from ..errors import HwloopError

        raise HwloopError("check: --compare compares the --analytic screen with sampling; give it with --analytic "
                          "and profiles")
    bars = Bars(args.min_accuracy, args.max_drop, args.max_flip_rate, parse_class_min(args.class_min),
                args.metric, args.max_increase)
    settings = Settings(bars, data=args.data, repeats=args.repeats, max_repeats=args.max_repeats,
                        confidence=args.confidence, scope=args.scope, seed=args.seed, batch_size=args.batch_size,
                        analytic=args.analytic, device=None if args.bench else args.device)
    profiles = [p.strip() for item in args.profile or [] for p in item.split(",") if p.strip()]
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    if args.bench:
        results = _on_bench(args, settings, profiles)
    else:
        results = run_matrix(args.models, profiles, settings, workers=args.workers, scheduler=args.scheduler,
                             cache=cache)
    print("\n\n".join(r.summary() for r in results))
    if args.compare:
        _compare(args, results, settings, profiles, cache)
    if len(results) > 1:
        print("\n" + markdown(results), end="")
    if args.junit:
        write_junit(results, args.junit)
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            open(tmp, "w", encoding="utf-8").write(markdown(results))
    publish(results)
    codes = {r.exit_code for r in results}
    return 1 if 1 in codes else (3 if 3 in codes else 0)


def _compare(args: argparse.Namespace, screens: list, settings, profiles: list[str], cache) -> None:
    """Sample every screened pair (dataset scope: the same samples, so the gap is the screen's own) and print
    the comparison; the exit status stays the screen's."""
    from dataclasses import replace

    from ..check.matrix import run_matrix
    from ..check.outputs import comparison

    sampled = run_matrix(args.models, profiles, replace(settings, analytic=False, scope="dataset",
                                                        repeats=settings.repeats or settings.max_repeats),
                         workers=args.workers, scheduler=args.scheduler, cache=cache)
    print("\n" + "\n\n".join(comparison(a, b) for a, b in zip(screens, sampled)))


def _on_bench(args: argparse.Namespace, settings, profiles: list[str]) -> list:
    """The models on the bench file's device (``hwloop.bench.target``), one after the other, uncached."""
    from ..bench.target import BenchTarget
    from ..check.matrix import run_matrix
    from ..errors import HwloopError

    if profiles or args.workers or args.scheduler:
        raise HwloopError("check: --bench runs on the bench's device here; give it without --profile, --workers "
                          "and --scheduler")
    target = BenchTarget(args.bench, args.device)
    try:
        return run_matrix(args.models, [target], settings, cache=None)
    finally:
        target.close()
