"""Benchmark: wall time of ``hwloop check`` to a decision, against a fixed 100-repeat check in the same run.

The demo model (trained here, seed 0) under the ``crossbar`` profile on the
digits test split (539 samples), bars 2 points from what the model does:

- ``drop``: --max-drop = its drop (noise-free minus noisy accuracy, from a
  1000-repeat reference run) + 0.02, scope population;
- ``accuracy``: --min-accuracy = its noisy accuracy - 0.02, scope dataset
  (in the population scope 539 samples cannot decide 2 points: the
  sampling error of the data alone is about 1.2 points; printed too).

Timed: the sequential check (stops at the first decision), the same check
with a fixed 100 repeats (one look), and the ``--analytic`` screen, each
given the loaded model and data (imports and loading excluded), fastest of
several calls (tools/timing.py).  Goals: sequential < 0.2x, analytic < 0.02x.

    .venv/bin/python tools/bench_check.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from exporters.demo import train_demo  # noqa: E402
from hwloop.check import Bars, check_model, resolve_target  # noqa: E402
from hwloop.check.analytic import analytic_check  # noqa: E402
from hwloop.data import load_data  # noqa: E402
from hwloop.devices.emulator import emulators  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402
from timing import best  # noqa: E402


def main() -> None:
    tmp = tempfile.TemporaryDirectory()
    path, _ = train_demo(Path(tmp.name) / "demo.onnx", seed=0, verbose=False)
    model = load_model(path)
    data = load_data("digits")
    prof = load_profile("crossbar")
    ref = run_model(model, data, devices=emulators(prof, model.layers), repeats=1000, seed=123)
    noisy = float(ref.accuracy.mean())
    clean = float((ref.clean_output.argmax(1) == data.y).mean())
    print(f"demo model under crossbar, digits ({len(data)} samples): noise-free {clean:.4f}, "
          f"noisy {noisy:.4f} (1000 repeats), drop {clean - noisy:.4f}")
    cases = {"drop (population)": (Bars(max_drop=clean - noisy + 0.02), "population"),
             "accuracy (dataset)": (Bars(min_accuracy=noisy - 0.02), "dataset"),
             "accuracy (population)": (Bars(min_accuracy=noisy - 0.02), "population")}
    target = resolve_target(prof)
    for name, (bars, scope) in cases.items():
        def seq():
            return check_model(model, profile=target, data=data, bars=bars, scope=scope, max_repeats=100)

        def fixed():
            return check_model(model, profile=target, data=data, bars=bars, scope=scope, repeats=100)

        def screen():
            return analytic_check(model, target, data, bars, scope=scope, confidence=0.95, seed=0,
                                  data_name="digits")

        r_seq, r_fix, r_an = seq(), fixed(), screen()
        t = best({"sequential": seq, "fixed": fixed, "analytic": screen}, reps=10)
        b = r_seq.bars[0]
        print(f"\n{name}: bar {'>=' if b.direction == 'min' else '<='} {b.threshold:.4f}")
        print(f"  fixed 100 repeats : {r_fix.decision:9s} {1e3 * t['fixed']:8.1f} ms  (reference)")
        print(f"  sequential        : {r_seq.decision:9s} {1e3 * t['sequential']:8.1f} ms  "
              f"{t['sequential'] / t['fixed']:.3f}x  ({r_seq.repeats} repeats)")
        print(f"  analytic screen   : {r_an.decision:9s} {1e3 * t['analytic']:8.1f} ms  "
              f"{t['analytic'] / t['fixed']:.3f}x  (value {r_an.bars[0].estimate.value:.4f}; "
              f"not modelled: {r_an.not_modelled or 'none'})")
    # the same, from the files (model loading and data loading included, imports not)
    bars, scope = cases["drop (population)"]
    kw = dict(profile="crossbar", data="digits", bars=bars, scope=scope)
    t = best({"sequential": lambda: check_model(path, max_repeats=100, **kw),
              "fixed": lambda: check_model(path, repeats=100, **kw)}, reps=10)
    print(f"\ndrop (population), from the model file and data spec: fixed {1e3 * t['fixed']:.1f} ms, "
          f"sequential {1e3 * t['sequential']:.1f} ms = {t['sequential'] / t['fixed']:.3f}x")
    print("\ngoals: sequential < 0.2x, analytic < 0.02x of the fixed 100-repeat check")


if __name__ == "__main__":
    main()
