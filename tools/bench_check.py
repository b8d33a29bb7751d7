"""Benchmark: wall time of ``hwloop check`` to a decision, against a fixed 100-repeat check in the same run.

What is timed (every contender is given the same loaded model, the same
loaded data and the same target; imports and loading excluded; fastest of
several calls, contenders taking turns, tools/timing.py):

- ``fixed``: ``check_model`` with a fixed 100 repeats (one look): the reference;
- ``sequential``: ``check_model`` stopping at the first decision (looks at 4, 8, ... 100 repeats);
- ``analytic cold``: ``analytic_check`` with nothing cached: the prediction of
  the logits' covariance, the static pass of the programmed chip (profiles
  with static errors) and the class probabilities, then the decision;
- ``one repeat``: ``check_model`` with 1 repeat: programming the chip and one pass over the data, what
  any screen of the programmed chip costs at least (its ratio is the floor of the analytic screen's);
- ``analytic warm``: ``analytic_check`` with the per-sample class
  probabilities of this (model, profile, data, seed) already computed in this
  process (as after a first screen, or from the on-disk cache of ``hwloop
  check``): the decision alone, e.g. when a bar or the confidence changes.

Part 1, the issue's setting: the demo model (trained here, seed 0) under
``crossbar`` on the digits test split (539 samples), bars 2 points from what
the model does (``drop`` bar = its drop + 0.02, scope population;
``accuracy`` bar = its noisy accuracy - 0.02, scope dataset and population).
Part 2, models where sampling costs more: an MLP 784-256-256-10 trained
briefly on MNIST (500 test samples; needs ../shared/data/mnist.npz or
$HWLOOP_MNIST), and a small CNN (conv 8, conv 16, average pooling) on the
digits, each under ``semenova`` (fresh noise only) and ``crossbar`` in one
array tile (static errors too).  Goals: sequential < 0.2x, analytic < 0.02x.

    PYTHONPATH=. .venv/bin/python tools/bench_check.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from exporters.demo import train_demo  # noqa: E402
from exporters.models import CNN, MLP, seeded  # noqa: E402
from exporters.torch_onnx import export_torch  # noqa: E402
from exporters.training import train_torch  # noqa: E402
from hwloop.check import Bars, Settings, check_model, resolve_target  # noqa: E402
from hwloop.check.analytic import analytic_check  # noqa: E402
from hwloop.check.screen import forget  # noqa: E402
from hwloop.data import load_data, shared_mnist  # noqa: E402
from hwloop.devices.emulator import emulators  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import run_model  # noqa: E402
from timing import best  # noqa: E402


def contenders(model, target, data, settings: Settings, sequential: bool = True) -> dict:
    """The timed calls, all on the same loaded model, data and target."""
    def fixed():
        return check_model(model, profile=target, data=data, settings=Settings(
            settings.bars, scope=settings.scope, repeats=100))

    def seq():
        return check_model(model, profile=target, data=data, settings=settings)

    def cold():
        forget()
        return analytic_check(model, target, data, settings)

    def warm():
        return analytic_check(model, target, data, settings)

    def one_pass():
        return check_model(model, profile=target, data=data, settings=Settings(
            settings.bars, scope=settings.scope, repeats=1))

    return {"fixed": fixed, **({"sequential": seq} if sequential else {}), "analytic cold": cold,
            "analytic warm": warm, "one repeat": one_pass}


def report(title: str, fns: dict, reps: int) -> None:
    results = {name: fn() for name, fn in fns.items()}
    t = best(fns, reps=reps, block=max(1, min(5, reps)))
    print(f"\n{title}")
    for name, r in results.items():
        extra = ("(the floor: programming the chip and one noisy pass)" if name == "one repeat" else
                 f"({r.repeats} repeats)" if r.method == "sampling" else
                 f"(value {r.bars[0].estimate.value:.4f}; not modelled: {r.not_modelled or 'none'})")
        ratio = "(reference)" if name == "fixed" else f"{t[name] / t['fixed']:.4f}x"
        print(f"  {name:14s}: {r.decision:9s} {1e3 * t[name]:9.2f} ms  {ratio:12s} {extra}")


def demo_part(tmp: Path) -> None:
    path, _ = train_demo(tmp / "demo.onnx", seed=0, verbose=False)
    model, data, prof = load_model(path), load_data("digits"), load_profile("crossbar")
    ref = run_model(model, data, devices=emulators(prof, model.layers), repeats=1000, seed=123)
    noisy = float(ref.accuracy.mean())
    clean = float((ref.clean_output.argmax(1) == data.y).mean())
    print(f"Part 1: demo model 64-32-16-10 under crossbar, digits ({len(data)} samples): noise-free {clean:.4f}, "
          f"noisy {noisy:.4f} (1000 repeats), drop {clean - noisy:.4f}")
    cases = {"drop (population)": Settings(Bars(max_drop=clean - noisy + 0.02)),
             "accuracy (dataset)": Settings(Bars(min_accuracy=noisy - 0.02), scope="dataset"),
             "accuracy (population)": Settings(Bars(min_accuracy=noisy - 0.02))}
    target = resolve_target(prof)
    for name, settings in cases.items():
        b = settings.bars.names()[0]
        report(f"{name}: bar {'>=' if b[1] == 'min' else '<='} {b[2]:.4f}",
               contenders(model, target, data, settings), reps=10)


def mnist_mlp(tmp: Path) -> tuple[Path, str] | None:
    mnist = shared_mnist()
    if mnist is None:
        print("\nPart 2: no MNIST (../shared/data/mnist.npz or $HWLOOP_MNIST): the MLP 784-256-256-10 is skipped")
        return None
    with seeded(0):
        net = MLP((784, 256, 256, 10), ("relu", "relu", "linear"))
    net = train_torch(net, load_data(f"mnist:{mnist}+train@10000"), epochs=2, lr=1e-3, seed=0, batch_size=128)
    return export_torch(net, tmp / "mlp.onnx", torch.zeros(2, 784)), f"mnist:{mnist}@500"


def small_cnn(tmp: Path) -> tuple[Path, str]:
    with seeded(2):
        net = CNN((1, 8, 8), channels=(8, 16), pool="avg")
    net = train_torch(net, load_data("digits+train"), epochs=10, lr=1e-2, seed=0, batch_size=64,
                      input_shape=(1, 8, 8))
    return export_torch(net, tmp / "cnn.onnx", torch.zeros(2, 1, 8, 8), optimize=False), "digits"


def large_part(tmp: Path) -> None:
    one_tile = tmp / "crossbar-one-tile.yaml"      # the prediction does not model row tiles (784 > 256 rows)
    text = load_profile("crossbar").text.replace("rows: 256", "rows: 1024").replace("name: crossbar",
                                                                                    "name: crossbar-one-tile")
    one_tile.write_text(text)
    for label, made in (("MLP 784-256-256-10 (MNIST)", mnist_mlp(tmp)), ("CNN conv8-conv16-avgpool (digits)",
                                                                         small_cnn(tmp))):
        if made is None:
            continue
        model, data = load_model(made[0]), load_data(made[1])
        for prof in ("semenova", one_tile):
            target = resolve_target(prof)
            ref = check_model(model, profile=target, data=data, settings=Settings(Bars(max_drop=1.0), repeats=20))
            drop = ref.bars[0].estimate.value
            settings = Settings(Bars(max_drop=max(drop, 0.0) + 0.02))
            report(f"Part 2: {label} under {target.name}, {len(data)} samples, bar drop <= {drop + 0.02:.4f} "
                   f"(population)", contenders(model, target, data, settings, sequential=False), reps=2)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        demo_part(Path(tmp))
        large_part(Path(tmp))
    print("\ngoals: sequential < 0.2x, analytic < 0.02x of the fixed 100-repeat check")


if __name__ == "__main__":
    main()
