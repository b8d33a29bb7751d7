"""Benchmark: the YAML-described ACME dialect (ASCII) against the ANB dialect (binary blocks), same layer sizes.

A 16x32 sigmoid layer (the ACME NC-16's whole array) on 512 samples x 20
repeats, ideal chips with instantaneous timing, each on its own simulated
controller on a real TCP socket in this process, reached through pyvisa:
  anb    VisaDevice (= DescribedDevice with anb.yaml) on SimulatedBench (binary
         float32 blocks, the array sized like the NC-16: 32 inputs, 16 outputs,
         64 samples per measurement; streamed, one round trip per measurement)
  ascii  DescribedDevice, the same driver, on DescribedController with acme-nc.yaml
         (ASCII lists, polled until idle; 64 samples per measurement), streamed:
         the next measurement written while this one is polled for and read
  step   the same, each measurement step by step (how polled dialects ran before)
Prints each one's time and the ASCII dialect's throughput relative to the ANB
dialect's (same measurements, same sizes), measured in the same run.  All
three controllers share this process (and its GIL) with the driver, so the
controller's ASCII formatting and parsing are counted as the driver's are;
``--apart`` serves each from its own process, as a real controller works
beside the host (streaming then overlaps the two sides' work).

    .venv/bin/python tools/bench_dialect.py [--samples 512] [--repeats 20] [--apart]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwloop.bench import ChipSpec, SimulatedBench, VisaDevice  # noqa: E402
from hwloop.bench.described import DescribedDevice  # noqa: E402
from hwloop.bench.described_server import DescribedController  # noqa: E402
from hwloop.layer import AnalogLayer  # noqa: E402
from tools.timing import best  # noqa: E402


class _Stepwise(DescribedDevice):
    """The same driver with streaming turned off (every polled measurement ran so before)."""

    streams = property(lambda self: False)


_SPEC = dict(max_inputs=32, max_outputs=16, max_batch=64, max_repeats=50, time_scale=0.0)


def _controller(kind: str):
    if kind == "anb":
        return SimulatedBench(None, spec=ChipSpec(**_SPEC)).start()
    return DescribedController("acme-nc").start()


def _serve(kind: str, conn) -> None:
    """In a child process (``--apart``): serve until told to stop."""
    ctl = _controller(kind)
    conn.send(ctl.resource)
    conn.recv()
    ctl.stop()


@contextmanager
def _controllers(kinds: list[str], apart: bool):
    """The resources of started controllers, in this process or each in its own."""
    with ExitStack() as stack:
        resources = []
        for kind in kinds:
            if apart:
                here, there = mp.Pipe()
                proc = mp.get_context("spawn").Process(target=_serve, args=(kind, there), daemon=True)
                proc.start()
                stack.callback(proc.join, 10)
                stack.callback(here.send, "stop")
                resources.append(here.recv())
            else:
                ctl = _controller(kind)
                stack.callback(ctl.stop)
                resources.append(ctl.resource)
        yield resources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--apart", action="store_true", help="each controller in its own process")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    layer = AnalogLayer(0, "fc", "Gemm", rng.uniform(-1, 1, (16, 32)).astype(np.float32),
                        rng.uniform(-0.5, 0.5, 16).astype(np.float32), "sigmoid")
    x = rng.uniform(-0.5, 0.5, (1, a.samples, 32)).astype(np.float32)
    with _controllers(["anb", "acme-nc", "acme-nc"], a.apart) as (r_anb, r_nc, r_step):
        with VisaDevice(r_anb) as anb, DescribedDevice("acme-nc", r_nc) as nc, _Stepwise("acme-nc", r_step) as step:
            for dev in (anb, nc, step):
                dev.program(layer)
            ya, yn, ys = (dev.run(x, repeats=a.repeats) for dev in (anb, nc, step))
            t = best({"anb": lambda: anb.run(x, repeats=a.repeats),
                      "ascii": lambda: nc.run(x, repeats=a.repeats),
                      "step": lambda: step.run(x, repeats=a.repeats)}, reps=6, block=2)
    values = a.samples * a.repeats * 16
    print(f"controllers {'each in its own process' if a.apart else 'in this process'}")
    print(f"16x32 sigmoid layer, {a.samples} samples x {a.repeats} repeats ({values} outputs), "
          f"{-(-a.samples // 64)} measurements per run")
    print(f"  anb   (binary blocks): {t['anb']:.3f} s   ascii (acme-nc.yaml): {t['ascii']:.3f} s streamed, "
          f"{t['step']:.3f} s step by step")
    print(f"  ascii throughput: {t['anb'] / t['ascii']:.2f}x the ANB dialect's streamed (goal >= 0.8x), "
          f"{t['anb'] / t['step']:.2f}x step by step (before)")
    print(f"  streamed = step by step: {np.array_equal(yn, ys)}")
    print(f"  same numbers: max |anb - ascii| = {float(np.abs(ya - yn).max()):.2e} (the ADCs differ: 16 vs 14 bits)")


if __name__ == "__main__":
    main()
