"""Benchmark: a run sharded on a 2-worker local Dask cluster vs 1 worker, and the overhead per shard.

MLP 784-4096-4096-10 (sigmoid, random weights: much arithmetic per recorded value) under the ``semenova``
profile, random inputs, recorded into a run store.  Measured in this one run,
best of ``--trials`` each, with the clusters started beforehand (their start-up
is printed separately):
  local-1t  run_model in this process, torch on 1 thread (what one worker does)
  local     run_model in this process, torch's default threads
  1 worker  run_model(scheduler=...) on a cluster of 1 single-threaded worker process
  2 workers the same on 2 worker processes
The goal is 2 workers >= 1.6x of 1 worker.  Also one ``check_model`` (the first quarter of the samples,
looks of 4, 8, 16 repeats) in this process vs sharded on the 2-worker cluster, its results compared.  Overhead per shard = (1 worker - local-1t)
/ batches: shipping inputs and results, the client's bookkeeping, each worker's set-up.
Every store is checked to hold the same bytes as the local run.

    .venv/bin/python tools/bench_dask.py [--samples 4000] [--batch-size 100] [--repeats 10] [--trials 2]

Other jobs on the machine slow the contenders unevenly; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.models import MLP, seeded  # noqa: E402
from exporters.torch_onnx import export_torch  # noqa: E402
from hwloop.check import check_model  # noqa: E402
from hwloop.data import Dataset  # noqa: E402
from hwloop.devices.emulator import emulators  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402

SIZES = (784, 4096, 4096, 10)


def chunk_bytes(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != "zarr.json"}


def timed_check(model, data: Dataset, **kw) -> tuple[float, object]:
    """Seconds for one check (looks of 4, 8, 16 repeats; max drop 0, which these repeats rarely decide)
    and its result."""
    t = time.perf_counter()
    r = check_model(model, data=data, max_repeats=16, max_drop=0.0, seed=3, **kw)
    return time.perf_counter() - t, r


def print_table(times: dict[str, float], args: argparse.Namespace, n_batches: int) -> None:
    rows = args.samples * args.repeats
    print(f"MLP {'-'.join(map(str, SIZES))}, profile semenova, {args.samples} samples x {args.repeats} repeats "
          f"in {n_batches} batches of {args.batch_size}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at the end; best of {args.trials}")
    print(f"{'':10s}{'seconds':>9s}{'rows/s':>11s}{'vs 1 worker':>13s}")
    for k, t in times.items():
        print(f"{k:10s}{t:9.2f}{rows / t:11.0f}{times['1 worker'] / t:12.2f}x")


def print_check(checks: dict, samples: int) -> None:
    (t_local, local), (t_dask, dask) = checks["local"], checks["2 workers"]
    print(f"check ({samples} samples, {local.repeats} repeats, {local.decision}): here {t_local:.2f} s, "
          f"2 workers {t_dask:.2f} s: {t_local / t_dask:.2f}x; same result: {dask.to_dict() == local.to_dict()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--trials", type=int, default=2)
    args = ap.parse_args()
    from dask.distributed import LocalCluster

    tmp = Path(tempfile.mkdtemp())
    with seeded(0):
        net = MLP(SIZES, ("sigmoid",) * 2 + ("linear",)).eval()
    model = load_model(export_torch(net, tmp / "mlp.onnx", torch.zeros(2, SIZES[0])))
    rng = np.random.default_rng(0)
    ds = Dataset("random", rng.random((args.samples, SIZES[0]), dtype=np.float32),
                 rng.integers(0, 10, args.samples), 10)
    profile = load_profile("semenova")
    n_batches = -(-args.samples // args.batch_size)

    def run(name: str, **kw) -> float:
        out = tmp / f"{name}.zarr"
        t = time.perf_counter()
        run_model(model, ds, devices=emulators(profile, model.layers), repeats=args.repeats, seed=3,
                  batch_size=args.batch_size, out=out, overwrite=True, **kw)
        return time.perf_counter() - t

    times: dict[str, float] = {}

    def trial(name: str, **kw) -> None:
        times[name] = min(run(name, **kw) for _ in range(args.trials))

    check = dict(model=model, profile=profile, data=ds.head(args.samples // 4), batch_size=args.batch_size)
    checks = {"local": timed_check(**check)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trial("local-1t")
    torch.set_num_threads(threads)
    trial("local")
    start = {}
    for n in (1, 2):
        t = time.perf_counter()
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            start[n] = time.perf_counter() - t
            trial(f"{n} worker{'s' * (n > 1)}", scheduler=cluster.scheduler_address)
            if n == 2:
                checks["2 workers"] = timed_check(**check, scheduler=cluster.scheduler_address)
    same = all(chunk_bytes(tmp / f"{k}.zarr") == chunk_bytes(tmp / "local.zarr") for k in times)
    shutil.rmtree(tmp)

    print_table(times, args, n_batches)
    print(f"2 workers vs 1 worker: {times['1 worker'] / times['2 workers']:.2f}x (goal >= 1.6x)")
    print(f"overhead per shard: {(times['1 worker'] - times['local-1t']) / n_batches * 1e3:.1f} ms "
          f"(1 worker vs this process on 1 thread, over {n_batches} batches; includes each run's set-up on "
          "the worker: receiving and loading the model, programming the emulators)")
    print(f"cluster start-up: {start[1]:.1f} s (1 worker), {start[2]:.1f} s (2 workers)")
    print(f"every store holds the same bytes as the local run: {same}")
    print_check(checks, args.samples // 4)


if __name__ == "__main__":
    main()
