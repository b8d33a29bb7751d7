"""Noise mitigation through the real path: ONNX transforms checked with onnxruntime, runs on the emulator,
measured effects against the prediction.

Statistical tolerances: a per-sample variance from R repetitions has a relative standard deviation of
sqrt(2 / (R - 1)); a mean over S independent samples divides it by sqrt(S) (averaging over neurons
only lowers it further), and a ratio of two independent estimates multiplies it by sqrt(2).  Tests
allow 4 of these standard deviations.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwloop.analysis import analyze_run, predict
from hwloop.analysis.networks import dense_onnx, random_weights
from hwloop.cli import main as cli
from hwloop.data import load_data
from hwloop.devices.emulator import Emulator, emulators
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.mitigate import MultiExec, parse_strategy, read_plan, wrap_devices
from hwloop.mitigate.advise import advise, context
from hwloop.mitigate.api import mitigate
from hwloop.mitigate.decompose import evaluate
from hwloop.mitigate.onnxedit import max_difference
from hwloop.mitigate.transforms import apply_plan, make_plan
from hwloop.profiles import parse_profile
from hwloop.runner import model_input, run_model

REPEATS, SAMPLES = 40, 300


def tolerance(repeats: int = REPEATS, samples: int = SAMPLES) -> float:
    """4 standard deviations of the ratio of two mean variances (module docstring)."""
    return 4 * np.sqrt(2) * np.sqrt(2 / (repeats - 1)) / np.sqrt(samples)


@pytest.fixture(scope="module")
def data():
    return load_data(f"digits@{SAMPLES}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """64-32-16-10, sigmoid, tanh, linear (random weights, fixed seed)."""
    path = tmp_path_factory.mktemp("mitigate") / "chain.onnx"
    return dense_onnx(path, random_weights([64, 32, 16, 10], seed=3), None, ["sigmoid", "tanh", "linear"])


@pytest.fixture(scope="module")
def relu_chain(tmp_path_factory):
    """64-32-16-10 with a relu layer whose gain is above 1 (weights of std 2.5/sqrt(n_in))."""
    w = random_weights([64, 32, 16, 10], seed=4)
    w[1] = w[1] * 2.5
    path = tmp_path_factory.mktemp("mitigate") / "relu.onnx"
    return dense_onnx(path, w, None, ["sigmoid", "relu", "linear"])


@pytest.fixture(scope="module")
def conv_dense(tmp_path_factory):
    """Conv -> Relu -> Flatten -> Linear -> Sigmoid -> Linear on 1x8x8 inputs (legacy exporter)."""
    from torch import nn

    from exporters.models import seeded
    from exporters.torch_onnx import export_torch

    with seeded(2):
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 16),
                            nn.Sigmoid(), nn.Linear(16, 10))
    return export_torch(net, tmp_path_factory.mktemp("mitigate") / "conv_dense.onnx", torch.zeros(2, 1, 8, 8))


def profile(layer0: str, rest: str = "{D_A: 0.0, D_M: 0.0, D_AC: 0.0, D_MC: 0.0}"):
    """Noise ``layer0`` (a flow mapping of noise keys) on layer 0 only."""
    return parse_profile(f"version: 1\nprovenance: {{source: hand-written}}\nnoise: {layer0}\n"
                         f"layers:\n  1: {{noise: {rest}}}\n  2: {{noise: {rest}}}\n")


def ort_output(path, x) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("fixture,specs,widths", [
    ("chain", ["ghost"], [33, 17, 10]),
    ("chain", ["ghost:3@1"], [32, 19, 10]),
    ("chain", ["duplicate:3"], [96, 48, 10]),
    ("chain", ["multi-exec:7"], [32, 16, 10]),
    ("relu_chain", ["slope"], [32, 16, 10]),
    ("chain", ["ghost", "duplicate:2", "multi-exec:5"], [66, 34, 10]),
    ("demo_onnx", ["ghost", "duplicate:2"], [66, 34, 10]),
    ("mlp_bn_onnx", ["ghost", "duplicate:2"], [34, 34, 10]),          # Gemm -> BatchNormalization -> Relu
    ("mlp_dynamo_onnx", ["duplicate:2"], [64, 48, 32, 10]),           # the dynamo exporter's graph
    ("conv_dense", ["ghost"], [4, 17, 10]),                           # the Conv is skipped (a note says so)
])
def test_transform_keeps_the_noise_free_function(request, tmp_path, data, fixture, specs, widths):
    src = request.getfixturevalue(fixture)
    out = tmp_path / "mitigated.onnx"
    plan, diff = mitigate(src, "semenova", data, specs, out)
    model = load_model(out)                       # imports as analog layers again, same names
    assert [l.n_out for l in model.layers] == widths
    assert [l.name for l in model.layers] == [l.name for l in load_model(src).layers]
    x = model_input(model, data)
    ref, got = ort_output(src, x), ort_output(out, x)
    assert np.max(np.abs(ref - got)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))
    assert diff <= 1e-5
    if "slope" in specs:
        assert plan.scale[1] < 1 and "gain" in plan.notes[0]
    if fixture == "conv_dense":
        assert any("skipped: layer 0" in n and "(Conv)" in n for n in plan.notes)
    assert read_plan(model) == plan.average


def test_ghost_rewrites_a_scikit_learn_graph(skl_mlp_onnx, tmp_path, data):
    """MatMul + Add layers with Cast, Softmax and ZipMap glue: the layers are replaced, the glue kept."""
    out = tmp_path / "skl.onnx"
    mitigate(skl_mlp_onnx, "semenova", data, ["ghost", "duplicate:2"], out)
    model = load_model(out)
    assert [l.n_out for l in model.layers] == [66, 34, 10]
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"ZipMap", "Cast"}
    assert max_difference(load_model(skl_mlp_onnx), onnx.load(str(out)), model_input(model, data)) <= 1e-5


def run_pair(src, prof, data, specs, tmp_path, repeats=REPEATS):
    """Run original and mitigated (files) on emulators of ``prof``; measured and predicted Datasets of both."""
    out = tmp_path / "m.onnx"
    plan, _ = mitigate(src, prof, data, specs, out)
    sides = []
    for path, avg in ((src, {}), (out, plan.average)):
        model = load_model(path)
        res = run_model(model, data, devices=wrap_devices(model, emulators(prof, model.layers)), repeats=repeats,
                        seed=5)
        sides.append((analyze_run(res), predict(model, prof, data, average=avg)))
    return sides


def test_ghost_neurons_cancel_correlated_additive_noise(chain, tmp_path, data):
    """Only layer 0 is noisy, with one shared additive draw: all of layer 1's noise is that common mode carried
    through W (its mean off-diagonal covariance has either sign with random weights, hence |.|)."""
    (m0, _), (m1, _) = run_pair(chain, profile("{D_AC: 1.0e-3}"), data, ["ghost@0"], tmp_path)
    for key in ("var_mean", "cm_var"):
        assert abs(float(m0[key][1])) > 1e-6
        assert abs(float(m0[key][1])) >= 10 * abs(float(m1[key][1])), key   # cancelled, up to float32 rounding


def test_ghost_effect_measured_as_predicted(chain, tmp_path, data):
    """With independent noise beside the correlated one, the ghost's own noise remains: the effect on the
    next layer's variance is measured as predicted (within 10%)."""
    (m0, p0), (m1, p1) = run_pair(chain, profile("{D_AC: 1.0e-3, D_A: 2.0e-4}"), data, ["ghost@0"], tmp_path)
    measured, predicted = float(m1.var_mean[1] / m0.var_mean[1]), float(p1.var_mean[1] / p0.var_mean[1])
    assert predicted < 0.5
    assert abs(measured / predicted - 1) <= 0.1


@pytest.mark.parametrize("k", [2, 4])
def test_duplication_divides_independent_additive_variance(chain, tmp_path, data, k):
    (m0, p0), (m1, p1) = run_pair(chain, profile("{D_A: 1.0e-4}"), data, [f"duplicate:{k}@0"], tmp_path)
    measured, predicted = float(m1.var_mean[1] / m0.var_mean[1]), float(p1.var_mean[1] / p0.var_mean[1])
    assert abs(measured * k - 1) <= tolerance()
    assert abs(measured / predicted - 1) <= 0.1


def test_duplication_leaves_correlated_noise(chain, tmp_path, data):
    (m0, _), (m1, _) = run_pair(chain, profile("{D_AC: 1.0e-4}"), data, ["duplicate:3@0"], tmp_path)
    assert abs(float(m1.var_mean[1] / m0.var_mean[1]) - 1) <= tolerance()


def test_multi_execution_divides_all_fresh_variance(chain, tmp_path, data):
    """multi-exec:6@0 on 3 layers gives layer 0 four executions: independent and correlated noise / 4."""
    (m0, p0), (m1, p1) = run_pair(chain, profile("{D_A: 1.0e-4, D_AC: 1.0e-4}"), data, ["multi-exec:6@0"],
                                  tmp_path)
    for key in ("var_mean", "cm_var"):
        measured, predicted = float(m1[key][0] / m0[key][0]), float(p1[key][0] / p0[key][0])
        assert abs(measured * 4 - 1) <= tolerance(), key
        assert abs(measured / predicted - 1) <= 0.1, key


def test_multi_exec_device_averages_k_runs(chain):
    layer = load_model(chain).layers[0]
    prof = profile("{D_A: 1.0e-2}")
    x = np.random.default_rng(0).uniform(0, 1, (1, 50, 64)).astype(np.float32)
    one, multi = Emulator(prof), MultiExec(Emulator(prof), 5)
    one.program(layer)
    multi.program(layer)
    y1, y5 = one.run(x, repeats=200, key=(1,)), multi.run(x, repeats=200, key=(1,))
    assert y5.shape == y1.shape == (200, 50, 32)
    assert abs(y5.var(axis=0).mean() * 5 / y1.var(axis=0).mean() - 1) <= tolerance(200, 50)
    xr = np.repeat(x, 3, axis=0)                  # R_in = repeats: each repetition evaluated k times
    assert multi.run(xr, repeats=3, key=(2,)).shape == (3, 50, 32)


@pytest.mark.parametrize("fixture,specs_list", [
    ("chain", (["ghost"], ["duplicate:3"], ["multi-exec:7"], ["ghost", "duplicate:2", "multi-exec:4"])),
    ("relu_chain", (["slope"], ["slope", "ghost"])),
])
def test_advisor_agrees_with_the_prediction_of_the_rewritten_model(request, data, fixture, specs_list):
    """The closed form (one decomposition, weighted sums) against ``predict`` on the transformed model."""
    model = load_model(request.getfixturevalue(fixture))
    ctx = context(model, "semenova", data)
    for specs in specs_list:
        plan = make_plan(model, [parse_strategy(s) for s in specs], noises=ctx.noises, op=ctx.op, terms=ctx.terms)
        mit = apply_plan(model, plan)
        pred = predict(mit.model, "semenova", data, average=plan.average)
        adv = evaluate(ctx.terms, ctx.op, plan)
        assert abs(adv["var"] / float(pred.var_mean[-1]) - 1) < 0.02, specs
        assert abs(adv["snr_db"] - float(pred.snr_db_median[-1])) < 0.1, specs


def test_advise_ranks_within_budget(demo_onnx, data):
    adv = advise(load_model(demo_onnx), "semenova", data, budget=2.0)
    labels = [r["label"] for r in adv.rows]
    assert "none" in labels and any(l.startswith("multi-exec") for l in labels) and "ghost" in labels
    within = [r for r in adv.rows if r["within"]]
    assert all(r["mac_ratio"] <= 2.0 + 1e-9 for r in within)
    assert [r["snr_db"] for r in within] == sorted((r["snr_db"] for r in within), reverse=True)
    assert abs(adv.shares.sum() - 1) < 1e-9 and adv.dominant
    assert any("tanh" in t for t in adv.not_applicable)     # demo's tanh layer has gain >= 1


@pytest.mark.parametrize("spec,message", [
    ("duplicate@2", "layer 2 '/4/Gemm' is the readout"),
    ("ghost@2", "layer 2 '/4/Gemm' is the readout"),
    ("slope", "layer 1 '/2/Gemm' (tanh"),
    ("duplicate:0", "whole number >= 1"),
    ("multi-exec:2", "cannot run each of the 3 layers once"),
    ("multi-exec:6:best", "unknown allocation scheme"),
    ("pool", "not of the form"),
    ("ghost@7", "no analog layer 7"),
])
def test_bad_strategy_is_one_line_exit_2(demo_onnx, tmp_path, capsys, spec, message):
    out = tmp_path / "m.onnx"
    rc = cli(["mitigate", str(demo_onnx), "--profile", "semenova", "--data", "digits@50", "--strategy", spec,
              "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_conv_layer_is_refused(cnn_onnx, tmp_path):
    with pytest.raises(HwloopError, match=r"layer 0 .*\(Conv\): duplication applies to dense layers only"):
        mitigate(cnn_onnx, "semenova", "digits@20", ["duplicate@0"], tmp_path / "m.onnx")


def test_cli_advise_and_prove(demo_onnx, tmp_path, capsys):
    assert cli(["mitigate", str(demo_onnx), "--profile", "semenova", "--data", "digits@100", "--advise"]) == 0
    text = capsys.readouterr().out
    assert "<- dominates" in text and "correlated additive" in text
    out = tmp_path / "m.onnx"
    assert cli(["mitigate", str(demo_onnx), "--profile", "semenova", "--data", "digits@100", "--strategy",
                "multi-exec:6", "--prove", "--repeats", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "output SNR gain" in text and "measured" in text and out.exists()
    plan = read_plan(load_model(out))
    assert plan and all(k > 1 for k in plan.values())
    store = tmp_path / "run.zarr"           # hwloop run honours the model's multi-execution plan
    assert cli(["run", str(out), "--profile", "semenova", "--data", "digits@20", "--repeats", "3",
                "--out", str(store)]) == 0
    from hwloop.store import open_run

    devices = open_run(store).attrs["devices"]
    assert {k: devices[k]["multi_exec"] for k in plan} == plan


def test_ghosts_refused_where_the_profile_tiles_columns(chain, tmp_path, data):
    tiled = parse_profile("version: 1\nprovenance: {source: hand-written}\nnoise: {D_AC: 1.0e-3}\narray: {cols: 16}\n")
    with pytest.raises(HwloopError, match=r"layer 0 .*column tiles of 16, each with its own correlated draw; ghost neurons"):
        mitigate(chain, tiled, data, ["ghost@0"], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args,message", [
    (["--advise", "--budget", "0.5"], "--budget: must be at least 1, got 0.5"),
    (["--strategy", "ghost", "--prove", "--repeats", "1"], "at least 2 repetitions"),
    (["--strategy", "ghost", "--out", "m.txt"], "name it *.onnx"),
    ([], "give --advise, or at least one --strategy"),
])
def test_bad_options_are_one_line_exit_2(demo_onnx, capsys, args, message):
    try:
        rc = cli(["mitigate", str(demo_onnx), "--profile", "semenova", "--data", "digits@50", *args])
    except SystemExit as e:        # an option refused by argparse (hwloop.argtypes) exits from the parser
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
