"""Benchmark: a run sharded on a 2-worker local Dask cluster vs 1 worker, and the overhead per shard.

MLP 784-4096-4096-10 (sigmoid, random weights: much arithmetic per recorded value) under the ``semenova``
profile, random inputs, recorded into a run store.  Measured in this one run,
best of ``--trials`` each, with the clusters started beforehand (their start-up
is printed separately):
  local-1t  run_model in this process, torch on 1 thread (what one worker does)
  local     run_model in this process, torch's default threads
  1 worker  run_model(scheduler=...) on a cluster of 1 single-threaded worker process
  2 workers the same on 2 worker processes
The goal is 2 workers >= 1.6x of 1 worker.  Overhead per shard = (1 worker - local-1t)
/ batches: shipping inputs and results, the client's bookkeeping, each worker's set-up.
Every store is checked to hold the same bytes as the local run.

    .venv/bin/python tools/bench_dask.py [--samples 4000] [--batch-size 100] [--repeats 10] [--trials 2]

``--check``: instead, one ``hwloop check`` (``check_model``, looks of 4, 8, ... 100 repeats: a bar
they cannot decide) of an MLP 784-1024-1024-10 under ``semenova`` on 1000 random samples (batches of
100), and of the demo model under ``crossbar`` on the digits (539 samples, batches of 100): here
(torch's threads, and one thread), on 1 worker and on 2 workers, contenders taking turns
(tools/timing.py), every result compared with the local check's.  Overhead per shard =
(1 worker - here on 1 thread) / (looks x batches).

    .venv/bin/python tools/bench_dask.py --check [--trials 2]

Other jobs on the machine slow the contenders unevenly; the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from exporters.demo import train_demo  # noqa: E402
from exporters.models import MLP, seeded  # noqa: E402
from exporters.torch_onnx import export_torch  # noqa: E402
from hwloop import randomness  # noqa: E402
from hwloop.check import check_model  # noqa: E402
from hwloop.cluster import NO_DASHBOARD  # noqa: E402
from hwloop.data import Dataset, load_data  # noqa: E402
from hwloop.devices.emulator import emulators  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402
from timing import best  # noqa: E402  (tools/timing.py)

SIZES = (784, 4096, 4096, 10)


def chunk_bytes(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != "zarr.json"}


def print_table(times: dict[str, float], args: argparse.Namespace, n_batches: int) -> None:
    rows = args.samples * args.repeats
    print(f"MLP {'-'.join(map(str, SIZES))}, profile semenova, {args.samples} samples x {args.repeats} repeats "
          f"in {n_batches} batches of {args.batch_size}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} at the end; best of {args.trials}")
    print(f"{'':10s}{'seconds':>9s}{'rows/s':>11s}{'vs 1 worker':>13s}")
    for k, t in times.items():
        print(f"{k:10s}{t:9.2f}{rows / t:11.0f}{times['1 worker'] / t:12.2f}x")


def mlp(sizes: tuple[int, ...], folder: Path):
    with seeded(0):
        net = MLP(sizes, ("sigmoid",) * (len(sizes) - 2) + ("linear",)).eval()
    return load_model(export_torch(net, folder / f"mlp-{len(sizes)}-{sizes[1]}.onnx", torch.zeros(2, sizes[0])))


def random_data(n: int, features: int) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset("random", rng.random((n, features), dtype=np.float32), rng.integers(0, 10, n), 10)


def check_part(args: argparse.Namespace, tmp: Path) -> None:
    """One check here (torch's threads; one thread), on 1 worker and on 2 workers, same result compared."""
    from dask.distributed import Client, LocalCluster

    cases = {"MLP 784-1024-1024-10, semenova, 1000 random samples": (
                 mlp((784, 1024, 1024, 10), tmp), random_data(1000, 784), "semenova"),
             "demo 64-32-16-10, crossbar, digits (539 samples)": (
                 load_model(train_demo(tmp / "demo.onnx", seed=0, verbose=False)[0]), load_data("digits"), "crossbar")}
    with contextlib.ExitStack() as stack:
        clients = {}
        for n in (1, 2):
            cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                       **NO_DASHBOARD))
            clients[n] = stack.enter_context(Client(cluster))
        for title, (model, data, profile) in cases.items():
            kw = dict(model=model, profile=load_profile(profile), data=data, max_repeats=100, max_drop=0.0, seed=3,
                      batch_size=100)
            results: dict[str, object] = {}

            def contender(name: str, client=None, threads: int | None = None):
                def call() -> None:
                    before = torch.get_num_threads()
                    torch.set_num_threads(threads or before)
                    randomness._pool = None        # the normals' thread pool follows torch's threads, as on a worker
                    try:
                        results[name] = check_model(**kw, scheduler=client.scheduler.address if client else None)
                    finally:
                        torch.set_num_threads(before)
                        randomness._pool = None
                return call

            t = best({"here": contender("here"), "here-1t": contender("here-1t", threads=1),
                      "1 worker": contender("1 worker", clients[1]), "2 workers": contender("2 workers", clients[2])},
                     reps=args.trials, block=1)
            print_check(title, t, results, data)


def print_check(title: str, t: dict[str, float], results: dict, data: Dataset) -> None:
    here = results["here"]
    shards = len(here.accuracy) and -(-len(data) // 100) * len(looks_of(here.repeats))
    print(f"\ncheck: {title}: {here.repeats} repeats in {len(looks_of(here.repeats))} looks, {here.decision}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'':10s}{'seconds':>9s}{'vs here':>10s}{'vs 1 worker':>13s}  same result as here")
    for k, v in t.items():
        print(f"{k:10s}{v:9.2f}{t['here'] / v:9.2f}x{t['1 worker'] / v:12.2f}x  {results[k].to_dict() == here.to_dict()}")
    print(f"2 workers vs here: {t['here'] / t['2 workers']:.2f}x (goal > 1); overhead per shard: "
          f"{(t['1 worker'] - t['here-1t']) / shards * 1e3:.1f} ms (1 worker vs here on 1 thread, {shards} shards)")


def looks_of(repeats: int) -> tuple[int, ...]:
    from hwloop.check.stats import looks

    return looks(repeats)


def run_part(args: argparse.Namespace, tmp: Path) -> None:
    """The run: here (1 thread, torch's threads), on 1 worker and on 2 workers, stores compared."""
    from dask.distributed import Client, LocalCluster, get_task_stream

    model, ds = mlp(SIZES, tmp), random_data(args.samples, SIZES[0])
    profile = load_profile("semenova")
    n_batches = -(-args.samples // args.batch_size)
    times: dict[str, float] = {}
    dask_share: list[float] = []       # 1 worker: wall time minus the worker's time computing its tasks

    def run(name: str, threads: int, **kw) -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        randomness._pool = None            # the normals' thread pool follows torch's threads
        t = time.perf_counter()
        run_model(model, ds, devices=emulators(profile, model.layers), repeats=args.repeats, seed=3,
                  batch_size=args.batch_size, out=tmp / f"{name}.zarr", overwrite=True, **kw)
        torch.set_num_threads(before)
        randomness._pool = None
        return time.perf_counter() - t

    def trial(name: str, threads: int = torch.get_num_threads(), client=None, **kw) -> None:
        ts = []
        for _ in range(args.trials):
            with get_task_stream(client) if client else contextlib.nullcontext() as stream:
                ts.append(run(name, threads, **kw))
            if client is not None and name == "1 worker":
                dask_share.append(ts[-1] - sum(ss["stop"] - ss["start"] for task in stream.data
                                               for ss in task["startstops"] if ss["action"] == "compute"))
        times[name] = min(ts)

    trial("local-1t", 1)
    trial("local")
    start = {}
    for n in (1, 2):
        t = time.perf_counter()
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, **NO_DASHBOARD) as cluster:
            start[n] = time.perf_counter() - t
            with Client(cluster) as client:
                trial(f"{n} worker{'s' * (n > 1)}", client=client, scheduler=cluster.scheduler_address)
    same = all(chunk_bytes(tmp / f"{k}.zarr") == chunk_bytes(tmp / "local.zarr") for k in times)
    print_table(times, args, n_batches)
    print(f"2 workers vs 1 worker: {times['1 worker'] / times['2 workers']:.2f}x (goal >= 1.6x)")
    print(f"overhead per shard: {(times['1 worker'] - times['local-1t']) / n_batches * 1e3:.1f} ms "
          f"(1 worker vs this process on 1 thread, over {n_batches} batches; includes each run's set-up on "
          "the worker: receiving and loading the model, programming the emulators); Dask's own share: "
          f"{min(dask_share) / n_batches * 1e3:.1f} ms (1 worker's wall time minus its tasks' computing, "
          "writing included, per batch: the client's set-up, shipping, round trips)")
    print(f"cluster start-up: {start[1]:.1f} s (1 worker), {start[2]:.1f} s (2 workers)")
    print(f"every store holds the same bytes as the local run: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="time one check here and on 1 and 2 workers instead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        (check_part if args.check else run_part)(args, tmp)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
