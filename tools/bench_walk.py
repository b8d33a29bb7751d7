"""Benchmark of Walking Noise sweeps (issue 7).

1. Evaluation-only walking sweep of the TFC MLP (784-64-64-64-10; trained
   briefly on MNIST, random weights when ../shared/data/mnist.npz is absent):
   8 sites x 41 sigmas (logspace 1e-2..1e8) on 10,000 test samples, timed with
   the clean prefix reused (``run_sweep``) and, as the reference measured in
   the same run, the same points each run from the input.  Both must give the
   same accuracies.
2. A noisy-training sweep (2 sites x 3 sigmas x 2 repeats = 12 points after 2
   clean models) on a local Dask cluster with 1 and then 2 single-threaded
   workers: wall times (cluster start and the workers' one-time imports and
   data loading excluded, reported apart), speed-up, and whether the two
   stores are identical.

    .venv/bin/python tools/bench_walk.py [--samples 10000] [--skip-dask]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exporters.torch_onnx import export_torch
from hwloop.cluster import NO_DASHBOARD
from hwloop.data import load_data, shared_mnist
from hwloop.walking.evaluate import SiteModel, accuracy
from hwloop.walking.sites import Noise, add_noise
from hwloop.walking.sweep import SweepSettings, open_sweep, parse_sigmas, run_sweep
from hwloop.walking.train import NoisyNet, TrainConfig, build_model, train


def tfc_onnx(folder: Path, mnist: Path | None) -> Path:
    module, shape = build_model("tfc", 784, 10, seed=0)
    net = NoisyNet(module, shape)
    if mnist is not None:
        train(net, load_data(f"mnist:{mnist}+train@20000"), TrainConfig(epochs=2), 1, 2)
    return export_torch(net.net, folder / "tfc.onnx", torch.zeros(2, 784))


def bench_eval(folder: Path, model: Path, data_spec: str) -> None:
    settings = SweepSettings(sigmas=parse_sigmas("logspace:1e-2:1e8:41"), data=data_spec, seed=0)
    t0 = time.perf_counter()
    out = run_sweep(settings, folder / "eval.zarr", model)
    product = time.perf_counter() - t0
    ds = open_sweep(out)
    sm, data = SiteModel(model), load_data(data_spec)
    keys = [(k, j) for k in range(len(sm.sites)) for j in range(len(settings.sigmas))]

    def loop(start: str) -> tuple[float, np.ndarray]:
        """Every point in memory, from the clean cache or from the input; the clean pass is timed too."""
        t0 = time.perf_counter()
        cache = sm.clean(data.x) if start == "cache" else None
        acc = np.empty((len(sm.sites), len(settings.sigmas)))
        for k, j in keys:
            rng = np.random.default_rng([settings.seed, k, j, 0])
            noise = settings.noise_at(k, settings.sigmas[j], len(sm.sites))
            logits = sm.run(noise, rng, cache=cache) if cache else sm.run(noise, rng, x=data.x)
            acc[k, j] = accuracy(logits, data.y)
        return time.perf_counter() - t0, acc

    reuse, acc_reuse = loop("cache")
    full, acc_full = loop("input")
    t0 = time.perf_counter()            # the part no reuse can save: drawing the noise itself
    cache = sm.clean(data.x)
    for k, j in keys:
        add_noise(cache[sm.sites[k].name], Noise("additive", settings.sigmas[j]),
                  np.random.default_rng([settings.seed, k, j, 0]))
    draws = time.perf_counter() - t0
    same = np.array_equal(acc_reuse, acc_full) and np.array_equal(acc_reuse, ds.accuracy.values[:, :, 0])
    print(f"evaluation-only walk: {len(sm.sites)} sites x {len(settings.sigmas)} sigmas x {len(data)} samples "
          f"(clean accuracy {ds.attrs['clean_accuracy']:.4f})")
    print(f"  hwloop walk (run_sweep, store written point by point): {product:6.2f} s   (goal < 30 s)")
    print(f"  points in memory, clean prefix reused : {reuse:6.2f} s")
    print(f"  points in memory, each from the input : {full:6.2f} s   (reference)")
    print(f"  noise draws alone (in both)           : {draws:6.2f} s")
    print(f"  ratio reused/reference {reuse / full:.3f} (speed-up {full / reuse:.2f}x); "
          f"without the draws {(reuse - draws) / (full - draws):.3f}; identical accuracies: {same}")


def bench_dask(folder: Path, mnist: Path | None) -> None:
    from dask.distributed import Client, LocalCluster

    from hwloop.walking.sweep import TrainJob

    data = f"mnist:{mnist}@2000" if mnist else "digits"
    train_data = f"mnist:{mnist}+train@20000" if mnist else "digits+train"
    settings = SweepSettings(sigmas=(1.0, 2.0, 4.0), train_noise=True, model_def="tfc", epochs=4, repeats=2,
                             data=data, train_data=train_data, sites=(1, 7))
    job = TrainJob(settings)
    job.warm_up()                       # this process: imports, data loaded (cached), first torch step
    times, stores = {}, {}
    for n in (1, 2):
        t0 = time.perf_counter()
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, **NO_DASHBOARD) as cluster, \
                Client(cluster) as client:
            start = time.perf_counter() - t0
            t0 = time.perf_counter()
            client.run(job.warm_up)     # every worker: the same one-time costs, in parallel
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            stores[n] = open_sweep(run_sweep(settings, folder / f"train{n}.zarr", scheduler=cluster.scheduler_address))
            times[n] = time.perf_counter() - t0
        print(f"noisy training, {n} worker(s): {times[n]:7.2f} s  "
              f"(not counted: cluster start {start:.1f} s, worker warm-up {warm:.1f} s)")
    same = all(np.array_equal(stores[1][v].values, stores[2][v].values, equal_nan=True) for v in stores[1].data_vars)
    print(f"  12 points + 2 clean models ({settings.epochs} epochs on {train_data}); "
          f"speed-up 2 vs 1 workers: {times[1] / times[2]:.2f}x (goal >= 1.7x); identical results: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--skip-dask", action="store_true")
    args = ap.parse_args()
    mnist = shared_mnist()
    print(f"data: {'MNIST ' + str(mnist) if mnist else 'MNIST absent: random TFC weights, random inputs'}; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    folder = Path(tempfile.mkdtemp(prefix="bench-walk-"))
    try:
        model = tfc_onnx(folder, mnist)
        if mnist:
            spec = f"mnist:{mnist}@{args.samples}"
        else:
            rng = np.random.default_rng(0)
            np.savez(folder / "rand.npz", x=rng.random((args.samples, 784), dtype=np.float32),
                     y=rng.integers(0, 10, args.samples))
            spec = f"npz:{folder / 'rand.npz'}"
        bench_eval(folder, model, spec)
        if not args.skip_dask:
            bench_dask(folder, mnist)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
