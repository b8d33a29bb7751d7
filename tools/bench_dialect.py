"""Benchmark: the YAML-described ACME dialect (ASCII) against the ANB dialect (binary blocks), same layer sizes.

A 16x32 sigmoid layer (the ACME NC-16's whole array) on 512 samples x 20
repeats, ideal chips with instantaneous timing, each on its own simulated
controller on a real TCP socket in this process, reached through pyvisa:
  anb    VisaDevice (= DescribedDevice with anb.yaml) on SimulatedBench (binary
         float32 blocks, the array sized like the NC-16: 32 inputs, 16 outputs,
         64 samples per measurement; streamed, one round trip per measurement)
  ascii  DescribedDevice, the same driver, on DescribedController with acme-nc.yaml
         (ASCII lists, polled until idle; 64 samples per measurement)
Prints each one's time and the ASCII dialect's throughput relative to the ANB
dialect's (same measurements, same sizes), measured in the same run.

    .venv/bin/python tools/bench_dialect.py [--samples 512] [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwloop.bench import ChipSpec, SimulatedBench, VisaDevice  # noqa: E402
from hwloop.bench.described import DescribedDevice  # noqa: E402
from hwloop.bench.described_server import DescribedController  # noqa: E402
from hwloop.layer import AnalogLayer  # noqa: E402
from tools.timing import best  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    layer = AnalogLayer(0, "fc", "Gemm", rng.uniform(-1, 1, (16, 32)).astype(np.float32),
                        rng.uniform(-0.5, 0.5, 16).astype(np.float32), "sigmoid")
    x = rng.uniform(-0.5, 0.5, (1, a.samples, 32)).astype(np.float32)
    spec = ChipSpec(max_inputs=32, max_outputs=16, max_batch=64, max_repeats=50, time_scale=0.0)
    with SimulatedBench(None, spec=spec) as anb_ctl:
        ascii_ctl = DescribedController("acme-nc").start()
        try:
            with VisaDevice(anb_ctl.resource) as anb, DescribedDevice("acme-nc", ascii_ctl.resource) as nc:
                anb.program(layer)
                nc.program(layer)
                ya, yn = anb.run(x, repeats=a.repeats), nc.run(x, repeats=a.repeats)
                t = best({"anb": lambda: anb.run(x, repeats=a.repeats),
                          "ascii": lambda: nc.run(x, repeats=a.repeats)}, reps=6, block=2)
        finally:
            ascii_ctl.stop()
    values = a.samples * a.repeats * 16
    print(f"16x32 sigmoid layer, {a.samples} samples x {a.repeats} repeats ({values} outputs), "
          f"{-(-a.samples // 64)} measurements per run")
    print(f"  anb   (binary blocks): {t['anb']:.3f} s   ascii (acme-nc.yaml): {t['ascii']:.3f} s")
    print(f"  ascii throughput: {t['anb'] / t['ascii']:.2f}x the ANB dialect's (goal >= 0.8x)")
    print(f"  same numbers: max |anb - ascii| = {float(np.abs(ya - yn).max()):.2e} (the ADCs differ: 16 vs 14 bits)")


if __name__ == "__main__":
    main()
