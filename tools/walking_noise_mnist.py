"""Walking Noise on MNIST (Borras, Klein, Froening 2024), reproduced with hwloop.

Trains the TFC MLP (784-64-64-64-10, ReLU) with and without BatchNorm, then prints:
1. evaluation-only additive walking sweep: midpoint per site, logits/input ratio;
2. global additive midpoints with and without BatchNorm;
3. tailored multi-execution at an equal budget, every allocation scheme;
4. noisy training at sites 1 and 7, unclamped and with weights clamped to
   [-C, C]: midpoints (evaluation-only vs noisy-trained), the weight magnitude
   of the layer before the noise, and how much of the gain the clamp removes.
Sweeps and their HTML reports are written under --out.

    .venv/bin/python tools/walking_noise_mnist.py --out walking-mnist [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from exporters.torch_onnx import export_torch
from hwloop.data import load_data, shared_mnist
from hwloop.walking.evaluate import SiteModel
from hwloop.walking.planner import SCHEMES, evaluate_plans
from hwloop.walking.plots import layer_before, midpoint_lines, sweep_midpoints, write_sweep_report
from hwloop.walking.sites import Noise
from hwloop.walking.sweep import SweepSettings, open_sweep, parse_sigmas, run_sweep
from hwloop.walking.train import NoisyNet, TrainConfig, build_model, train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("walking-mnist"))
    ap.add_argument("--epochs", type=int, default=15, help="clean TFC training epochs on 60k (paper: 100)")
    ap.add_argument("--samples", type=int, default=10000, help="test samples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=20000, help="noisy training: training samples")
    ap.add_argument("--train-epochs", type=int, default=5, help="noisy training: epochs per point")
    ap.add_argument("--clamp", type=float, default=0.1)
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--plan-sigma", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2, help="local Dask workers for noisy training")
    args = ap.parse_args()
    mnist = shared_mnist()
    if mnist is None:
        print("../shared/data/mnist.npz is absent", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    test = f"mnist:{mnist}@{args.samples}"
    t_start = time.time()
    models = trained_models(args, mnist)
    mu = evaluation_walk(args, models, test)
    global_midpoints(args, models, test)
    multi_execution(args, models, test, mu)
    noisy_training(args, mnist)
    print(f"done in {time.time() - t_start:.0f} s; sweeps and reports in {args.out}")
    return 0


def trained_models(args, mnist: str) -> dict[str, Path]:
    """The clean TFC with and without BatchNorm, trained on all 60k (kept in --out: a rerun reuses them)."""
    models = {}
    for name in ("tfc", "tfc-bn"):
        path = args.out / f"{name}.onnx"
        if not path.exists():
            module, shape = build_model(name, 784, 10, seed=0)
            net = train(NoisyNet(module, shape), load_data(f"mnist:{mnist}+train"), TrainConfig(epochs=args.epochs), 1, 2)
            export_torch(net.net, path, torch.zeros(2, 784))
        models[name] = path
    return models


def sweep(args, name: str, settings: SweepSettings, model: Path | None = None, **kw):
    out = args.out / f"{name}.zarr"
    ds = open_sweep(run_sweep(settings, out, model, **kw))
    write_sweep_report(out, args.out / f"{name}.html")
    return ds


def evaluation_walk(args, models: dict[str, Path], test: str) -> np.ndarray:
    print(f"== 1. evaluation-only additive walk, TFC ({args.epochs} epochs), {args.samples} test samples")
    walk = SweepSettings(sigmas=parse_sigmas("logspace:1e-2:1e8:41"), data=test, repeats=args.repeats)
    ds = sweep(args, "walk-tfc", walk, models["tfc"])
    print("\n".join(midpoint_lines(ds)))
    mu = np.array([m.value for m in sweep_midpoints(ds)])
    print(f"lowest site {np.argmin(mu)}, highest site {np.argmax(mu)}; logits/input = {mu[-1] / mu[0]:.1f}x")
    return mu


def global_midpoints(args, models: dict[str, Path], test: str) -> None:
    print("== 2. global additive midpoint (logspace 1e-2..1e2, 17 points)")
    for name in ("tfc", "tfc-bn"):
        g = sweep(args, f"global-{name}", SweepSettings(sigmas=parse_sigmas("logspace:1e-2:1e2:17"), mode="global",
                                                        data=test, repeats=args.repeats), models[name])
        print(f"  {name:<7} clean {g.attrs['clean_accuracy']:.4f}  global midpoint {sweep_midpoints(g)[0]}")


def multi_execution(args, models: dict[str, Path], test: str, mu: np.ndarray) -> None:
    print(f"== 3. multi-execution at budget {args.budget}, global additive sigma {args.plan_sigma}")
    plans = evaluate_plans(SiteModel(models["tfc"]), load_data(test), mu, args.budget,
                           Noise("additive", args.plan_sigma), SCHEMES, repeats=args.repeats)
    for p in plans:
        print(f"  {p.scheme:<12} accuracy {p.mean:.4f} +- {p.accuracy.std(ddof=1) / np.sqrt(len(p.accuracy)):.4f}"
              f"  repetitions {' '.join(map(str, p.allocation))}")


def noisy_training(args, mnist: str) -> None:
    print(f"== 4. noisy training at sites 1 and 7 ({args.train_epochs} epochs on {args.train_samples} samples)")
    gains = {}
    for clamp in (None, args.clamp):
        s = SweepSettings(sigmas=(0.5, 1, 2, 4, 8, 16, 32, 64, 128), train_noise=True, model_def="tfc",
                          epochs=args.train_epochs, data=f"mnist:{mnist}@2000",
                          train_data=f"mnist:{mnist}+train@{args.train_samples}", sites=(1, 7), clamp=clamp)
        ds = sweep(args, f"train-{'clamp' if clamp else 'free'}", s, workers=args.workers)
        label = f"clamp {clamp}" if clamp else "no clamp"
        print(f"  -- {label}")
        print("\n".join("  " + line for line in midpoint_lines(ds)))
        ev, tr = sweep_midpoints(ds, "accuracy_eval_only"), sweep_midpoints(ds, "accuracy")
        for i, layer in enumerate(layer_before(ds)):
            site = int(ds.site.values[i])
            w0 = float(ds.clean_weight_mag.values[:, layer].mean())
            w = ds.weight_mag.isel(site=i, layer=layer).mean("repeat").values
            gains[(clamp, site)] = np.log(min(tr[i].value, ds.sigma.values.max()) / ev[i].value)
            print(f"  site {site}: layer before {ds.layer.values[layer]} mean|W| clean {w0:.4f} -> "
                  f"{' '.join(f'{v:.4f}' for v in w)} (per training sigma); "
                  f"midpoint gain x{np.exp(gains[(clamp, site)]):.2f}")
    for site in (1, 7):
        free, clamped = gains[(None, site)], gains[(args.clamp, site)]
        print(f"  site {site}: clamping removes {100 * (1 - clamped / free):.0f}% of the log-midpoint gain "
              "(a gain capped at the largest sigma when not reached)")


if __name__ == "__main__":
    sys.exit(main())
