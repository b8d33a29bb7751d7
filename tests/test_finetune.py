"""Hardware-in-the-loop fine-tuning on simulated chips reached through real pyvisa over TCP.

The chips hide a strong mismatch (per-neuron gain spread 10%, offsets, transfer functions other
than the model's activations, a 6-bit ADC, noise).  Accuracies are on the 539 digits test samples;
differences are judged against binomial standard errors of these 539 samples.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from hwloop.bench import VisaDevice
from hwloop.data import load_data
from hwloop.errors import HwloopError
from hwloop.finetune import FinetuneConfig, finetune
from hwloop.graph import load_model

pytest_plugins = ["tests.bench_fixtures"]

#: what each of the demo's three chips really does (the model has sigmoid, tanh, linear)
HIDDEN = [
    {"transfer": {"function": "exp_sat"}, "adc": {"bits": 6, "range": [-1.0, 1.0]}},
    {"transfer": {"function": "relu"}, "adc": {"bits": 6, "range": [-1.0, 1.0]}},
    {"adc": {"bits": 6, "range": [-4.0, 4.0]}},
]
MISMATCH = {"gain_offset": {"gain": 0.1, "offset": 0.1}, "noise": {"D_A": 1.0e-4}}


def chip_profile(k: int) -> dict:
    return {"name": f"chip{k}", "version": 1, "provenance": {"source": "assumption"}, **MISMATCH, **HIDDEN[k]}


def write_profile(path, data: dict):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def chips(make_bench, tmp_path, demo_onnx):
    """Three simulated chips (one per layer of the demo), their devices, and their true per-neuron gains."""
    from hwloop.profiles import parse_profile

    model = load_model(demo_onnx)
    benches, devices, truth = [], {}, []
    for k, L in enumerate(model.layers):
        bench = make_bench(parse_profile(yaml.safe_dump(chip_profile(k))), seed=11 + k, weight_range=4.0)
        devices[k] = VisaDevice(bench.resource, on_clip="warn", timeout_ms=5000)
        devices[k].program(L)
        devices[k].run(np.zeros((1, 1, L.n_in), np.float32), repeats=1)   # the chip builds its layer
        emu = bench.chip.emulator                                         # the hidden truth, for the twin
        truth.append({"gain": emu._gain[0].tolist(), "offset": emu._offset[0].tolist()})
        benches.append(bench)
    yield model, benches, devices, truth
    for d in devices.values():
        d.close()


def twin_file(tmp_path, truth, calibrated: bool):
    """A bench file of profiles: the chips' physics with their per-neuron values (calibrated), or with
    the gain and offset spread left out (mis-calibrated)."""
    devices = {}
    for k, t in enumerate(truth):
        prof = chip_profile(k)
        if calibrated:
            prof["provenance"]["per_neuron"] = t
        else:       # no spread, and layer 1's transfer function taken for the model's activation
            prof.pop("gain_offset")
            if k == 1:
                prof.pop("transfer")
        name = f"{'twin' if calibrated else 'bad_twin'}{k}.yaml"
        devices[f"t{k}"] = {"profile": str(write_profile(tmp_path / name, prof))}
    doc = {"devices": devices, "layers": {k: f"t{k}" for k in range(len(truth))}}
    return write_profile(tmp_path / ("twin.yaml" if calibrated else "bad_twin.yaml"), doc)


def onnx_correct(path, ds) -> np.ndarray:
    """Per-sample correctness of the ONNX file run by onnxruntime as a whole."""
    from hwloop.runner import model_input

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = model_input(load_model(path), ds)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1) == ds.y


@pytest.mark.slow
def test_hil_recovers_the_chip_and_a_miscalibrated_twin_does_not(chips, tmp_path):
    model, benches, devices, truth = chips
    cfg = dict(epochs=8, lr=3e-3, batch_size=64, seed=1)
    hil = finetune(model, "digits+train", val="digits", devices=devices, twin=twin_file(tmp_path, truth, True),
                   config=FinetuneConfig(mode="hil", **cfg), out=tmp_path / "hil.onnx").report
    before, after = hil["accuracy_before"], hil["accuracy_after"]
    n = hil["n_val"]
    se = math.sqrt(sum(a * (1 - a) / n for a in (before["ideal"], before["chip"])))
    assert before["ideal"] - before["chip"] >= 0.15 + 2 * se, before  # the mismatch costs >= 15 points
    assert after["chip"] >= before["ideal"] - 0.02, (before, after)   # HIL: within 2 points of the software model
    # the tuned ONNX is a standard model: onnxruntime loads it, the graph is unchanged
    assert [n_.op_type for n_ in load_model(tmp_path / "hil.onnx").proto.graph.node] == \
        [n_.op_type for n_ in model.proto.graph.node]

    bad = twin_file(tmp_path, truth, False)
    twin = finetune(model, "digits+train", val="digits", devices=devices, twin=bad,
                    config=FinetuneConfig(mode="twin", **cfg), out=tmp_path / "twin.onnx").report["accuracy_after"]
    hil_bad = finetune(model, "digits+train", val="digits", devices=devices, twin=bad,
                       config=FinetuneConfig(mode="hil", **cfg)).report["accuracy_after"]
    assert hil_bad["chip"] >= before["ideal"] - 0.02, hil_bad          # HIL recovers with that twin anyway
    se_gap = math.sqrt(sum(a * (1 - a) / n for a in (hil_bad["chip"], twin["chip"])))
    assert hil_bad["chip"] - twin["chip"] > 2 * se_gap, (hil_bad, twin)  # the twin alone recovers less


def test_cnn_fine_tunes_through_pooling_and_flatten_glue(cnn_onnx, tmp_path):
    """Only the two Convs train; their gradient has to pass MaxPool, MaxPool + Flatten and the frozen Gemm."""
    from hwloop.devices.emulator import Emulator
    from hwloop.profiles import parse_profile

    prof = parse_profile(yaml.safe_dump({"version": 1, "provenance": {"source": "assumption"}, **MISMATCH}))
    model = load_model(cnn_onnx)
    assert [type(s).__name__ for s in model.steps] == ["AnalogLayer", "Glue", "AnalogLayer", "Glue", "AnalogLayer"]
    out = tmp_path / "cnn_tuned.onnx"
    rep = finetune(model, "digits+train", val="digits", devices={k: Emulator(prof) for k in range(3)},
                   config=FinetuneConfig(epochs=3, lr=2e-2, layers=(0, 1)), out=out).report
    before, after, n = rep["accuracy_before"], rep["accuracy_after"], rep["n_val"]
    assert after["chip"] > before["chip"] + 10 * math.sqrt(0.25 / n), (before, after)
    tuned = load_model(out)
    assert np.array_equal(tuned.layers[2].weight, model.layers[2].weight)       # frozen
    assert not np.allclose(tuned.layers[0].weight, model.layers[0].weight)
    # the written graph (BatchNorm kept, new Conv weights under it) computes what was trained
    assert abs(onnx_correct(out, load_data("digits")).mean() - after["ideal"]) <= 1 / n


def emulator_bench(tmp_path):
    """A bench file with one emulated chip (keyed noise: a resumed run must equal an uninterrupted one)."""
    prof = write_profile(tmp_path / "chip.yaml", chip_profile(2))
    bench = tmp_path / "bench.yaml"
    bench.write_text(f"devices:\n  chip: {{profile: {prof}}}\ndefault: chip\n")
    return bench, prof


def initializers(path) -> dict[str, bytes]:
    import onnx

    return {i.name: i.SerializeToString() for i in onnx.load(str(path)).graph.initializer}


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, demo_onnx):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from hwloop.cli import main

    bench, prof = emulator_bench(tmp_path)
    args = ["finetune", str(demo_onnx), "--bench", str(bench), "--twin", str(prof), "--data", "digits+train@480",
            "--val", "digits@100", "--epochs", "6", "--batch-size", "32", "--lr", "3e-3", "--reg", "0.01",
            "--seed", "5"]
    full, killed = tmp_path / "full.onnx", tmp_path / "killed.onnx"
    assert main([*args, "--out", str(full)]) == 0          # 6 epochs x 15 steps
    proc = subprocess.Popen([sys.executable, "-m", "hwloop", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed.onnx.ckpt.npz"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with np.load(ckpt) as z:
                if int(z["step"]) >= 10:
                    break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not killed.exists()
    with np.load(ckpt) as z:
        assert 10 <= int(z["step"]) < 90
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    assert initializers(killed) == initializers(full)
    a = json.loads((tmp_path / "killed.onnx.report.json").read_text())
    b = json.loads((tmp_path / "full.onnx.report.json").read_text())
    assert (a["accuracy_before"], a["accuracy_after"], a["epochs"]) == (b["accuracy_before"], b["accuracy_after"],
                                                                        b["epochs"])
    # a checkpoint is continued only by the run that wrote it
    assert main([*args[:-1], "6", "--out", str(killed), "--resume"]) == 2


def tiny_model_with_round(tmp_path):
    """x (N, 4) -> Gemm -> Relu -> Round (glue) -> Gemm -> (N, 3): Round has no useful gradient."""
    from onnx import helper

    from exporters.handbuilt import write_onnx

    rng = np.random.default_rng(0)
    inits = {n: rng.normal(size=s) for n, s in (("w1", (8, 4)), ("b1", (8,)), ("w2", (3, 8)), ("b2", (3,)))}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="act1"),
             helper.make_node("Round", ["r"], ["q"], name="round"),
             helper.make_node("Gemm", ["q", "w2", "b2"], ["y"], name="fc2", transB=1)]
    path = write_onnx(tmp_path / "round.onnx", nodes, {"x": ["N", 4]}, {"y": ["N", 3]}, inits)
    np.savez(tmp_path / "d.npz", x=rng.random((30, 4)).astype(np.float32), y=rng.integers(0, 3, 30))
    return path, f"npz:{tmp_path / 'd.npz'}"


def test_bad_input_is_one_line_and_exit_2(tmp_path, demo_onnx, capsys):
    from hwloop.cli import main

    _, prof = emulator_bench(tmp_path)
    short = chip_profile(0)
    short["provenance"]["per_neuron"] = {"gain": [1.0] * 5, "offset": [0.0] * 5}
    wrong_size = write_profile(tmp_path / "short.yaml", short)
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"devices:\n  t: {{profile: {prof}}}\nlayers:\n  0: t\n  3: t\n")
    round_model, round_data = tiny_model_with_round(tmp_path)
    cases = {
        "size": (["--twin", str(wrong_size), "--mode", "twin"], "per_neuron.gain: 5 value(s), but layer 0"),
        "count": (["--twin", str(extra), "--mode", "twin"], "no analog layer 3"),
        "glue": (["--mode", "ideal", "--data", round_data], "node 'round' (Round): digital glue that finetune "
                                                            "cannot differentiate"),
        "hil without chips": ([], "mode hil needs the devices"),
    }
    for name, (extra_args, msg) in cases.items():
        model = round_model if name == "glue" else demo_onnx
        out = tmp_path / f"{name}.onnx"
        capsys.readouterr()
        assert main(["finetune", str(model), "--out", str(out), "--epochs", "1", *extra_args]) == 2, name
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, (name, err)
        assert not out.exists() and not (tmp_path / f"{name}.onnx.ckpt.npz").exists(), name


def test_chip_that_disconnects_stops_with_a_resumable_checkpoint(make_bench, tmp_path, demo_onnx):
    from hwloop.bench import Faults

    model = load_model(demo_onnx)
    opts = dict(retries=2, backoff_s=0.01, max_backoff_s=0.02, timeout_ms=2000)
    bad = make_bench(faults=Faults(drop_after=300, refuse_s=60), weight_range=4.0)
    cfg = FinetuneConfig(epochs=2, batch_size=64, lr=1e-3)
    ckpt = tmp_path / "t.ckpt.npz"
    dev = VisaDevice(bad.resource, **opts)
    with pytest.raises(HwloopError) as e:
        finetune(model, "digits+train", val="digits@64", devices={0: dev}, config=cfg, checkpoint_path=ckpt)
    dev.close()
    msg = str(e.value)
    assert "after 2 retries" in msg and "--resume" in msg and str(ckpt) in msg, msg
    assert dev.stats["retries"] >= 1
    with np.load(ckpt) as z:
        stopped = int(z["step"])
    assert 1 <= stopped < 40
    good = VisaDevice(make_bench(weight_range=4.0).resource, **opts)
    try:
        rep = finetune(model, "digits+train", val="digits@64", devices={0: good}, config=cfg,
                       checkpoint_path=ckpt, resume=True).report
    finally:
        good.close()
    assert rep["steps"] == 40 and len(rep["epochs"]) == 2


@pytest.mark.parametrize("fixture", ["mlp_onnx", "mlp_dynamo_onnx", "cnn_dynamo_onnx", "mlp_bn_onnx",
                                     "skl_mlp_onnx", "handbuilt_onnx"])
def test_every_model_is_rebuilt_in_torch_and_written_back(fixture, request, tmp_path):
    """Each exporter's glue in torch equals onnxruntime (checked inside finetune), and a short
    training writes a graph that imports to the trained layers (checked inside finetune too)."""
    path = request.getfixturevalue(fixture)
    out = tmp_path / "tuned.onnx"
    res = finetune(path, "digits+train@128", val="digits@64", config=FinetuneConfig(mode="ideal", epochs=1, lr=1e-2),
                   out=out)
    assert res.report["steps"] == 2
    model, tuned = load_model(path), load_model(out)
    assert [n.op_type for n in tuned.proto.graph.node] == [n.op_type for n in model.proto.graph.node]
    assert any(not np.array_equal(a.weight, b.weight) for a, b in zip(model.layers, tuned.layers))


def test_clamp_to_the_chip_range_regularisation_and_frozen_layers(demo_onnx):
    from hwloop.devices.emulator import Emulator
    from hwloop.profiles import parse_profile

    prof = parse_profile(yaml.safe_dump({"version": 1, "provenance": {"source": "assumption"},
                                         "weights": {"range": 1.0}}))
    model = load_model(demo_onnx)
    assert max(np.abs(L.weight).max() for L in model.layers) > 1.5

    def run(**kw):
        cfg = FinetuneConfig(mode="twin", epochs=1, lr=1e-2, **kw)
        return finetune(model, "digits+train@256", val="digits@64", twin=None, config=cfg,
                        devices={k: Emulator(prof) for k in range(3)})

    clamped = run(clamp="chip", layers=(0, 2))
    assert all(np.abs(clamped.weights[k]).max() <= 1.0 for k in (0, 2))
    assert np.array_equal(clamped.weights[1], model.layers[1].weight)              # not trained
    free, held = run(), run(reg=1e3)
    moved = [sum(float(np.abs(w - L.weight).sum()) for w, L in zip(r.weights, model.layers)) for r in (free, held)]
    assert moved[1] < 0.5 * moved[0], moved
