"""Lab-bench tools.  ``hwloop bench serve``: a simulated ANB-series bench controller
(../shared/bench/SCPI.md) on a TCP port, its chip physics from a device profile,
with optional fault injection for testing drivers and runs.  Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields

HELP = "lab bench: serve a simulated bench controller (hwloop bench serve --port P --profile P.yaml)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench.faults import Faults
    from ..cli import help_text

    sub = p.add_subparsers(dest="bench_command", metavar="ACTION")
    sub.required = True
    s = sub.add_parser("serve", help="serve a simulated bench controller", description=help_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--port", type=int, default=5025, help="TCP port (default 5025; 0 picks a free one)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--profile", help="device profile of the simulated chip (default: ideal)")
    s.add_argument("--chip", help="chip description YAML (capacity, ranges, timing; see hwloop.bench.ChipSpec)")
    s.add_argument("--seed", type=int, default=0, help="seed of the simulator's own random generator")
    s.add_argument("--time-scale", type=float, help="multiplies the manual's worst-case timings (0: instant)")
    g = s.add_argument_group("fault injection")
    for f in fields(Faults):
        kind = {"int | None": int, "float": float, "int": int, "str": str}[str(f.type)]
        g.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"])


def main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..bench import ChipSpec, Faults, SimulatedBench
    from ..errors import HwloopError

    import torch

    # A controller process serves one client at a time: one thread keeps its idle OpenMP workers
    # from spinning on the cores its client (and other controllers) need.
    torch.set_num_threads(1)
    spec = ChipSpec.from_yaml(args.chip) if args.chip else ChipSpec()
    if args.time_scale is not None:
        spec = replace(spec, time_scale=args.time_scale)
    try:
        faults = Faults(**{f.name: getattr(args, f.name) for f in fields(Faults)})
    except ValueError as e:
        raise HwloopError(str(e)) from None
    bench = SimulatedBench(args.profile, port=args.port, host=args.host, faults=faults, spec=spec,
                           seed=args.seed).start()
    active = faults.active()
    print(f"serving {bench.spec.model} ({bench.spec.max_inputs}x{bench.spec.max_outputs}) at {bench.resource}"
          + (f" with faults {active}" if active else ""), flush=True)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        bench.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped: {bench.clock.count} commands, {bench.connections} connections served, "
              f"{bench.refused} refused, faults {bench.clock.fired}, chip compute {bench.chip.compute_s:.3f} s",
              file=sys.stderr, flush=True)
    return 0
