"""Benchmark: hardware-in-the-loop fine-tuning of the demo model on one simulated chip vs twin-only training.

The demo model (64-32-16-10) is trained for --epochs on digits+train with its three analog layers on
one simulated bench controller (a real TCP socket through pyvisa, the three layers sharing the
chip and reprogrammed as the steps go, --time-scale 0 by default: the simulated chip takes no
extra time, so transport and host overhead show), and in the same run through the twin alone
(the chip's profile, no chip in the loop).  Prints:

  steps/s        of each mode, and hil / twin
  time shares    of a hil step: chip (the controller simulating its physics), transfers
                 (everything else inside the device calls: VISA round trips, encoding,
                 programming checks) and host (twin, glue, autograd, Adam), checkpoints (one
                 atomic, fsynced .npz per step)
  round trips    to the chip per step and per layer per step (goal O(1): one programming
                 and one measurement per layer per batch), from the driver's counters

    .venv/bin/python tools/bench_finetune.py [--epochs 3] [--batch-size 64] [--time-scale 0]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import hwloop  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from hwloop.bench import ChipSpec, SimulatedBench, VisaDevice
from hwloop.bench.driver import ROUND_TRIPS_PER_MEASUREMENT, ROUND_TRIPS_PER_PROGRAMMING
from hwloop.finetune import FinetuneConfig, finetune
from hwloop.graph import load_model
from hwloop.profiles import parse_profile
from timing import options  # tools/timing.py (python puts the script's folder on the path)

PROFILE = """
version: 1
provenance: {source: assumption}
gain_offset: {gain: 0.1, offset: 0.05}
noise: {D_A: 1.0e-4}
adc: {bits: 8, range: [-16, 16]}
"""


def main() -> None:
    args = options(__doc__, epochs=3, batch_size=64, time_scale=0.0)
    from exporters.demo import train_demo

    prof = parse_profile(PROFILE)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = train_demo(Path(tmp) / "demo.onnx", verbose=False)
        model = load_model(path)
        cfg = dict(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3)
        with SimulatedBench(prof, spec=ChipSpec(time_scale=args.time_scale, weight_range=4.0), seed=1) as bench:
            first = VisaDevice(bench.resource, on_clip="warn", scale_inputs=True)
            devices = {0: first, 1: first.sibling(), 2: first.sibling()}
            try:
                t0, c0, m0 = time.perf_counter(), bench.chip.compute_s, bench.clock.count
                hil = finetune(model, "digits+train", val="digits@64", devices=devices,
                               config=FinetuneConfig(mode="hil", **cfg),
                               checkpoint_path=Path(tmp) / "hil.ckpt.npz").report
                wall = time.perf_counter() - t0
                chip = bench.chip.compute_s - c0
                meas = sum(d.stats["measurements"] for d in devices.values())
                messages = bench.clock.count - m0
            finally:
                first.close()
        t0 = time.perf_counter()
        twin = finetune(model, "digits+train", val="digits@64", twin=_write(tmp, prof),
                        config=FinetuneConfig(mode="twin", **cfg), checkpoint_path=Path(tmp) / "twin.ckpt.npz").report
        wall_twin = time.perf_counter() - t0
    steps = hil["steps"]
    # the evaluations before and after (64 samples, one batch, three layers each) are in the counts
    # and times; they are small against the training steps and are subtracted from the round trips
    hil_rate = steps / hil["wall_s_this_session"]
    twin_rate = steps / twin["wall_s_this_session"]
    in_dev = hil["chip_s_this_session"]
    trips = (meas * ROUND_TRIPS_PER_MEASUREMENT + hil["programmings_this_session"] * ROUND_TRIPS_PER_PROGRAMMING)
    eval_trips = 2 * 3 * (ROUND_TRIPS_PER_MEASUREMENT + ROUND_TRIPS_PER_PROGRAMMING)
    per_step = (trips - eval_trips) / steps
    print(f"demo model, {steps} steps of batch {args.batch_size}, one simulated chip (3 layers), "
          f"time scale {args.time_scale:g}")
    print(f"  hil   {hil_rate:8.1f} steps/s   (wall {wall:.2f} s with evaluations)")
    print(f"  twin  {twin_rate:8.1f} steps/s   (wall {wall_twin:.2f} s)")
    print(f"  hil / twin speed: {hil_rate / twin_rate:.2f}x")
    total = hil["wall_s_this_session"]
    ck = hil["checkpoint_s_this_session"]
    print(f"  hil time: chip {chip / total:.0%}, transfers {(in_dev - chip) / total:.0%}, "
          f"host {(total - in_dev - ck) / total:.0%}, checkpoints (atomic, fsynced) {ck / total:.0%}")
    print(f"  round trips per step {per_step:.1f} ({per_step / 3:.1f} per layer: one programming of "
          f"{ROUND_TRIPS_PER_PROGRAMMING} + one measurement of {ROUND_TRIPS_PER_MEASUREMENT}); "
          f"SCPI messages received by the controller: {messages / steps:.1f} per step (evaluations included)")


def _write(tmp: str, prof) -> Path:
    p = Path(tmp) / "twin.yaml"
    p.write_text(prof.text)
    return p


if __name__ == "__main__":
    main()
