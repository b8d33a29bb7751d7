"""Benchmark: the mitigation advisor versus one 100-repeat Monte-Carlo run of the same model, same run.

MLP 784-100-100-100-10 (sigmoid hidden layers, W ~ N(0, 1/n_in), fixed
seed) under the Semenova-style profile, on 1,000 samples (MNIST test images
when ../shared/data/mnist.npz or $HWLOOP_MNIST exists, else uniform random
inputs).  The advisor ranks every strategy and combination at a budget of
2x MACs analytically, on its default share of the samples (and, for
comparison, on all of them: time and whether the ranking is the same); the reference is one ``run_model`` with 100
repetitions on profiled emulators plus ``analyze_run`` (what a user would
otherwise do to see the noise of a single variant).  Prints the fastest of
several calls of each and the ratio (goal: advisor < 1/20).

    .venv/bin/python tools/bench_mitigate.py [--samples 1000] [--repeats 100]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import inputs  # noqa: E402  (the same samples as the prediction benchmark)
from timing import best, options  # noqa: E402

from hwloop.analysis import analyze_run  # noqa: E402
from hwloop.analysis.networks import dense_onnx, random_weights  # noqa: E402
from hwloop.devices.emulator import emulators  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.mitigate.advise import ADVISE_SAMPLES, advise, format_advice  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402


SIZES = (784, 100, 100, 100, 10)


def setup(samples: int, profile: str):
    """The random sigmoid MLP (seed 0), the profile and the samples of ``bench_predict``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = dense_onnx(Path(tmp) / "mlp.onnx", random_weights(SIZES, seed=0), None, ["sigmoid"] * 3 + ["linear"])
        model = load_model(path)
    return model, load_profile(profile), inputs(samples)


def main() -> None:
    args = options(__doc__, samples=1000, repeats=100, reps=(5, "calls of each contender (the fastest counts)"),
                   profile="semenova")
    model, prof, data = setup(args.samples, args.profile)
    out = {}

    def monte_carlo():
        out["mc"] = analyze_run(run_model(model, data, devices=emulators(prof, model.layers), repeats=args.repeats))

    def advisor():
        out["advice"] = advise(model, prof, data, budget=2.0)

    def advisor_all():
        out["advice_all"] = advise(model, prof, data, budget=2.0, samples=None)

    t = best({"advisor": advisor, "advisor_all": advisor_all, "monte_carlo": monte_carlo}, reps=args.reps, block=1)
    print(format_advice(out["advice"]).split("\n\nnot applicable")[0].split("\n\nwhat each")[0])
    none = next(r for r in out["advice"].rows if r["label"] == "none")
    print(f"\nunmitigated output SNR: advisor {none['snr_db']:.2f} dB, Monte-Carlo "
          f"{float(out['mc']['snr_db_median'].values[-1]):.2f} dB ({args.repeats} repeats)")
    print(f"data: {data.name}, {len(data)} samples; profile {args.profile}")
    mc = t["monte_carlo"]
    print(f"one {args.repeats}-repeat Monte-Carlo run on {len(data)} samples: {mc * 1e3:.1f} ms")
    print(f"advisor, all strategies ranked, on its default {ADVISE_SAMPLES} of the samples (evenly spaced): "
          f"{t['advisor'] * 1e3:.1f} ms, ratio 1/{mc / t['advisor']:.1f} (goal: below 1/20)")
    print(f"advisor on all {len(data)} samples: {t['advisor_all'] * 1e3:.1f} ms, ratio 1/{mc / t['advisor_all']:.1f}")
    rank = [r["label"] for r in out["advice"].rows]
    rank_all = [r["label"] for r in out["advice_all"].rows]
    gap = max(abs(a["snr_db"] - b["snr_db"]) for a, b in zip(
        sorted(out["advice"].rows, key=lambda r: r["label"]), sorted(out["advice_all"].rows, key=lambda r: r["label"])))
    same = "equals" if rank == rank_all else "DIFFERS from"
    print(f"ranking from {ADVISE_SAMPLES} samples {same} the ranking from all; "
          f"largest SNR difference {gap:.2f} dB")


if __name__ == "__main__":
    main()
