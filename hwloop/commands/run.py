"""Run a model's analog layers on devices and record every layer's outputs in a run store.

Default device: the ideal emulator for every analog layer.  --profile runs
every layer on the emulator with that device profile; --bench maps layers to
chips and emulators from a bench file.  The store is written batch by batch
and survives a kill: continue it with --resume.  --workers N (a local Dask
cluster) or --scheduler tcp://HOST:PORT computes the batches on Dask workers
(emulators only) into the same store bytes.  --device cuda computes the
emulators in torch on a GPU (--device cpu: the default path).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run a model on devices and record every layer (repeat x sample x neuron) in a run store"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="ONNX model file")
    p.add_argument("--output", help="the graph output whose class scores give the accuracy (default: the first "
                                    "float (batch, classes) output)")
    p.add_argument("--data", default="digits", help="data spec: digits, mnist:PATH, fashion-mnist:PATH, npz:PATH (x and y, or y and "
                                                     "one array per graph input) "
                                                     "(+train, @N) (default: digits)")
    p.add_argument("--repeats", type=_positive, default=1, help="repetitions per sample (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--out", type=Path, help="run store to write (RUN.zarr)")
    p.add_argument("--batch-size", type=_positive, help="samples per batch (default: from memory, at most 1000)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue an interrupted run in --out from its first unfinished batch (starts it when "
                           "--out does not exist); model, data, seed, repeats and batch size must match")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--profile", help="device profile (YAML path or name in device_profiles/) for every layer")
    dev.add_argument("--bench", type=Path, help="bench file (YAML) mapping layers to chips, plug-in devices and "
                                                "emulators (docs/own-chip.md)")
    p.add_argument("--dry-run", action="store_true", help="show the plan without running anything")
    dask = p.add_mutually_exclusive_group()
    dask.add_argument("--workers", type=_positive, help="shard the batches across a local Dask cluster of N "
                      "single-threaded processes (emulators only; same store bytes as without)")
    dask.add_argument("--scheduler", help="shard the batches across an existing Dask cluster tcp://HOST:PORT "
                      "(emulators only; same store bytes as without)")
    p.add_argument("--device", help="where the emulators compute: cpu (the default numbers) or cuda[:N] (torch on "
                                    "a GPU; same seed, same numbers on the same GPU, statistically equal to cpu)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _profile_devices(name: str | None, model, device: str | None) -> tuple[dict | None, dict]:
    """The --profile emulators (None without one) and the provenance they add; says which activations
    run on the host."""
    if not name:
        return None, {}
    from ..devices.emulator import emulators, host_activations
    from ..profiles import load_profile

    profile = load_profile(name)
    for line in host_activations(profile, model.layers):
        print(line)
    return emulators(profile, model.layers, device=device), {"profile": profile.describe(),
                                                            "profile_sha256": profile.sha256}


def main(args: argparse.Namespace) -> int:
    from ..progress import announce_imports
    announce_imports("hwloop run", "hwloop.graph", "hwloop.runner")   # seconds of silence otherwise
    from ..data import load_data
    from ..errors import HwloopError
    from ..graph import load_model
    from ..physics import compute_device
    from ..runner import default_batch_size, run_model

    compute_device(args.device)       # an unusable --device: one line, before anything is read or written
    model = load_model(args.model, output=args.output)
    print(model.summary())
    for note in model.notes:
        print(f"note: {note}")
    if len(model.recorded_outputs) > 1:
        print(f"graph outputs recorded: {', '.join(n for n, _ in model.recorded_outputs)} "
              f"(accuracy from {model.output_name!r})")
    ds = load_data(args.data)
    devices, provenance = _profile_devices(args.profile, model, args.device)
    bench = None
    if args.bench:
        from ..bench import load_bench

        bench = load_bench(args.bench)
    batch = args.batch_size or default_batch_size(model, args.repeats, len(ds),
                                                  pipelined=bench is not None and bench.pipelined(model))
    if args.resume and args.batch_size is None and args.out is not None and args.out.exists():
        from ..store import read_attrs

        batch = int(read_attrs(args.out).get("batch_size", batch))   # continue with the store's batches
    if args.dry_run:
        if bench is not None:
            print(bench.plan(model, len(ds), batch, args.repeats))
        else:
            where = f"emulator with profile {args.profile}" if args.profile else "ideal emulator"
            print(f"{args.model}: {len(model.layers)} analog layers on the {where}; {len(ds)} samples of "
                  f"{ds.name} in {-(-len(ds) // batch)} batches of {batch}, {args.repeats} repeats")
        return 0
    if args.out is None:
        raise HwloopError("--out RUN.zarr is required (or use --dry-run)")
    if bench is not None:
        devices = bench.devices(model)
        provenance["bench"] = bench.describe()
    from ..mitigate.multiexec import wrap_devices

    devices = wrap_devices(model, devices)   # a mitigated model's multi-execution plan (ONNX metadata)
    try:
        result = run_model(model, ds, devices=devices, repeats=args.repeats, seed=args.seed, batch_size=batch,
                           out=args.out, resume=args.resume, overwrite=args.overwrite, progress=True,
                           provenance=provenance, scheduler=args.scheduler, workers=args.workers, device=args.device)
    finally:
        for dev in ({id(d): d for d in devices.values()}.values() if isinstance(devices, dict) else []):
            dev.close()
    from ..numbers import pm

    print(pm(result.accuracy))
    print(f"run store: {result.path}")
    return 0
