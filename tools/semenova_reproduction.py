"""Reproduce the qualitative claims of Semenova, Larger & Brunner (Neural Networks 146, 2022) with a plot.

Claims checked (prediction, mean-field closed form and Monte-Carlo overlaid):
  1. noise accumulation through depth is bounded: more layers do not raise
     the noise beyond a limit (deep symmetric network with slope < 1, and a
     random sigmoid MLP, whose slopes are <= 1/4);
  2. an activation slope below 1 suppresses accumulation (fixed point D / (1 - g^2));
  3. a slope above 1 lets it grow (geometrically, ratio g^2 per layer).

Networks: "symmetric" (all weights g/N, N = 100, linear neurons, so g is the
slope) with correlated + uncorrelated additive noise D = 1e-3 after every
layer; a random sigmoid MLP (W ~ N(0, 1/N)) under the Semenova-style profile.
Monte-Carlo: the real runner with profiled emulators (2,000 repetitions of
4 samples; seeds fixed).

    .venv/bin/python tools/semenova_reproduction.py [--out semenova_reproduction.png] [--depth 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from hwloop.analysis import MeanField, analyze_run, meanfield_curve, predict
from hwloop.analysis.networks import dense_onnx, random_weights, symmetric_weights
from hwloop.data import Dataset
from hwloop.devices import Emulator
from hwloop.graph import load_model
from hwloop.profiles import load_profile, parse_profile
from hwloop.report import new_figure
from hwloop.runner import run_model

N, D = 100, 1e-3
SLOPES = (0.5, 0.9, 1.0, 1.1)


def monte_carlo(model, prof, x: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    data = Dataset("inputs", x, np.zeros(len(x), np.int64), 10)
    devices = {k: Emulator(prof) for k in range(len(model.layers))}
    return analyze_run(run_model(model, data, devices=devices, repeats=repeats, seed=seed))["var_mean"].values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("semenova_reproduction.png"))
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    depth = np.arange(1, args.depth + 1)
    x = np.random.default_rng(0).uniform(0, 1, (4, N)).astype(np.float32)
    noise = parse_profile(f"version: 1\nprovenance: {{source: assumption}}\nnoise: {{D_A: {D}, D_AC: {D}}}\n",
                          "semenova-additive")

    fig, axs = new_figure(ncols=2, width=6.0, height=4.5)
    ax1, ax2 = axs[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, g in enumerate(SLOPES):
            model = load_model(dense_onnx(Path(tmp) / f"sym{g}.onnx", symmetric_weights(N, args.depth, g / N)))
            pred = predict(model, noise, x)["var_mean"].values
            mc = monte_carlo(model, noise, x, args.repeats, seed=i)
            mf = MeanField(N=N, w_mean=g / N, D_A=D, D_AC=D)
            curve = meanfield_curve(mf, args.depth)["total"]
            ax1.semilogy(depth, pred, "-", color=f"C{i}", label=f"slope {g}: predicted")
            ax1.semilogy(depth, curve, ":", color=f"C{i}", lw=2)
            ax1.semilogy(depth, mc, "o", color=f"C{i}", ms=4, mfc="none")
            fp = mf.fixed_point().sum()
            rows.append((f"symmetric, slope {g}", mf.growth, pred[-1], mc[-1], fp, pred[-1] / pred[len(pred) // 2 - 1]))
        ax1.axhline(D, color="gray", lw=0.8, ls="--")
        ax1.set(xlabel="layer (depth)", ylabel="noise variance (mean over neurons)",
                title="Symmetric network: slope < 1 bounds, > 1 grows\n(lines: prediction, dots: mean field, "
                      "circles: Monte-Carlo)")
        ax1.legend(fontsize=8)

        prof = load_profile("semenova")
        w = random_weights([N] * (args.depth + 1), seed=1)
        model = load_model(dense_onnx(Path(tmp) / "sigmoid.onnx", w, activations="sigmoid"))
        xs = np.random.default_rng(1).uniform(-1, 1, (4, N)).astype(np.float32)
        pred = predict(model, prof, xs)
        mc = monte_carlo(model, prof, xs, args.repeats, seed=99)
        ax2.plot(depth, pred["var_mean"].values, "-", label="predicted")
        ax2.plot(depth, mc, "o", mfc="none", label="Monte-Carlo")
        ax2.plot(depth, pred["cm_var"].values, "--", label="common-mode part (predicted)")
        ax2.set(xlabel="layer (depth)", ylabel="noise variance (mean over neurons)", ylim=(0, None),
                title="Random sigmoid MLP, Semenova profile:\nbounded accumulation")
        ax2.legend(fontsize=8)
        v = pred["var_mean"].values
        rows.append(("random sigmoid MLP", "bounded" if v[-1] / v[len(v) // 2 - 1] < 1.05 else "growing",
                     v[-1], mc[-1], float("nan"), v[-1] / v[len(v) // 2 - 1]))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)

    print(f"{'network':<24} {'growth':>9} {'pred@end':>10} {'MC@end':>10} {'fixed pt':>10} {'end/middle':>10}")
    for name, growth, p, m, fp, ratio in rows:
        print(f"{name:<24} {growth:>9} {p:10.4e} {m:10.4e} {fp:10.4e} {ratio:10.3f}")
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    main()
