"""Matrices of models x profiles (locally and on a real local Dask cluster), JUnit/Markdown/annotations,
the result cache, regressor bars, and the analytic screen against sampling."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from conftest import randomise_batchnorm
from exporters.models import CNN, seeded
from exporters.torch_onnx import export_torch
from hwloop.check import check_model
from hwloop.check.bars import Bars
from hwloop.check.matrix import Settings, run_matrix
from hwloop.check.outputs import annotations, markdown, publish, write_junit
from hwloop.errors import HwloopError

PROFILES = ["semenova", "crossbar", "optical"]


@pytest.mark.slow
def test_two_models_by_three_profiles_locally_and_on_two_dask_workers(demo_onnx, handbuilt_onnx, tmp_path):
    settings = Settings(Bars(max_drop=0.05, max_flip_rate=0.2), data="digits@150", max_repeats=8)
    local = run_matrix([demo_onnx, handbuilt_onnx], PROFILES, settings)
    environ = dict(os.environ)
    dask = run_matrix([demo_onnx, handbuilt_onnx], PROFILES, settings, workers=2)
    assert dict(os.environ) == environ      # the cluster's OMP_NUM_THREADS=1 stays with its workers
    assert [r.name for r in local] == [f"{m}[{p}]" for m in ("demo.onnx", "handbuilt.onnx") for p in PROFILES]
    assert [r.to_dict() for r in dask] == [r.to_dict() for r in local]
    assert {r.decision for r in local} >= {"pass"} and all(r.repeats in (4, 8) for r in local)

    write_junit(local, tmp_path / "j.xml")
    suite = ET.parse(tmp_path / "j.xml").getroot()
    cases = suite.findall("testcase")
    assert len(cases) == 6 and suite.get("tests") == "6"
    assert suite.get("failures") == str(sum(r.decision != "pass" for r in local))
    props = {p.get("name"): p.get("value") for p in cases[1].iter("property")}
    assert props["profile"] == "crossbar" and props["decision"] == local[1].decision and "drop_bound" in props
    table = markdown(local).splitlines()
    assert len(table) == 2 + 6 and table[0] == "| model | profile | decision | repeats | drop | flip_rate |"
    assert table[3].startswith("| demo.onnx | crossbar | ")


def _result(demo_onnx, **kw):
    return check_model(demo_onnx, profile="crossbar", data="digits@100", max_repeats=4, **kw)


def test_annotations_and_job_summary_under_github_actions(demo_onnx, tmp_path, capsys):
    ok, bad = _result(demo_onnx, min_accuracy=0.5), _result(demo_onnx, min_accuracy=1.0, max_drop=0.5)
    assert (ok.decision, bad.decision) == ("pass", "fail")
    lines = annotations([ok, bad])
    assert lines == [f"::error title=hwloop check::demo.onnx[crossbar]: fail: {bad.reason()}"]
    assert "accuracy 0." in lines[0] and "bar >= 1.0000" in lines[0] and "drop" not in lines[0]
    publish([ok, bad], environ={})                                   # not under GitHub Actions: nothing
    assert capsys.readouterr().out == ""
    summary = tmp_path / "summary.md"
    publish([ok, bad], environ={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert capsys.readouterr().out.splitlines() == lines
    assert "| demo.onnx | crossbar | ❌ fail |" in summary.read_text()


def test_cache_skips_an_unchanged_pair_and_reruns_a_changed_one(demo_onnx, tmp_path):
    s = Settings(Bars(max_drop=0.2), data="digits@100", max_repeats=4)
    first = run_matrix([demo_onnx], ["semenova"], s, cache=tmp_path)
    again = run_matrix([demo_onnx], ["semenova"], s, cache=tmp_path)
    assert not first[0].cached and again[0].cached
    assert {**again[0].to_dict(), "cached": False} == first[0].to_dict()
    other_seed = run_matrix([demo_onnx], ["semenova"], Settings(s.bars, data=s.data, max_repeats=4, seed=1),
                            cache=tmp_path)
    assert not other_seed[0].cached and len(list(tmp_path.glob("*.json"))) == 2
    entry = next(p for p in tmp_path.glob("*.json") if json.loads(p.read_text())["seed"] == 0)
    entry.write_text("{not json")                                    # a damaged entry is recomputed and replaced
    assert not run_matrix([demo_onnx], ["semenova"], s, cache=tmp_path)[0].cached
    assert json.loads(entry.read_text())["decision"] == first[0].decision


def test_regressor_bars_on_rmse_and_mae(tmp_path):
    from exporters.torch_onnx import export_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).eval()
    x = np.random.default_rng(0).standard_normal((120, 4)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()[:, 0] + 0.05
    np.savez(tmp_path / "reg.npz", x=x, y=y.astype(np.float64))
    path = export_torch(net, tmp_path / "reg.onnx", torch.zeros(2, 4), dynamo=False)
    data = f"npz:{tmp_path / 'reg.npz'}"
    loose = check_model(path, profile="semenova", data=data, metric="rmse", max_increase=0.5, max_repeats=8)
    tight = check_model(path, profile="semenova", data=data, metric="mae", max_increase=0.0, max_repeats=8)
    assert loose.decision == "pass" and loose.bars[0].name == "rmse_increase" and 0 < loose.bars[0].estimate.value
    assert tight.decision == "fail" and tight.bars[0].estimate.value > 0
    with pytest.raises(HwloopError, match="a regressor has no accuracy bars"):
        check_model(path, profile="semenova", data=data, metric="rmse", max_drop=0.1)


@pytest.mark.parametrize("profile", ["semenova", "optical"])
def test_analytic_screen_agrees_with_sampling_on_the_demo_model(demo_onnx, profile):
    _agrees(demo_onnx, profile)


def test_analytic_screen_agrees_with_sampling_on_a_cnn(tmp_path):
    """A CNN whose glue is linear (average pooling, flatten): the prediction propagates through it."""
    with seeded(2):
        model = CNN((1, 8, 8), channels=(8, 16), pool="avg")
    path = export_torch(randomise_batchnorm(model, seed=3), tmp_path / "cnn_avg.onnx", torch.zeros(2, 1, 8, 8),
                        dynamo=False, optimize=False)
    _agrees(path, "semenova")


def test_analytic_screen_agrees_with_sampling_with_row_tiles(demo_onnx, tmp_path):
    """crossbar with 20-row arrays: the demo model's 64 and 32 inputs are summed in 4 and 2 row tiles, each
    partial sum with its own noise, read noise and ADC, added on the host (the prediction refuses them)."""
    from hwloop.profiles import load_profile

    path = tmp_path / "crossbar-20-rows.yaml"
    path.write_text(load_profile("crossbar").text.replace("rows: 256", "rows: 20"))
    _agrees(demo_onnx, str(path))


@pytest.mark.parametrize("profile", ["semenova", "crossbar"])
def test_analytic_screen_agrees_with_sampling_on_a_trained_max_pooling_cnn(trained_max_cnn, profile):
    """Max pooling, static programming errors and ADCs (crossbar): the screen's logits' Jacobians pass
    each pool's arg-max element's noise."""
    _agrees(trained_max_cnn, profile)


@pytest.fixture(scope="module")
def trained_max_cnn(tmp_path_factory):
    from helpers import trained_digits_cnn

    return trained_digits_cnn(tmp_path_factory.mktemp("maxcnn"), "max", epochs=10)


#: the screen's approximation budget (first-order covariance, Gaussian logits), in accuracy / flip-rate points
TOLERANCE = 0.005


def _agrees(model, profile):
    """The screen's accuracy and flip rate lie within TOLERANCE plus 3 standard errors of 200 sampled repeats."""
    s = Settings(Bars(min_accuracy=0.0, max_flip_rate=1.0), data="digits", scope="dataset")
    screen = run_matrix([model], [profile], Settings(s.bars, data=s.data, scope="dataset", analytic=True))[0]
    sampled = run_matrix([model], [profile], Settings(s.bars, data=s.data, scope="dataset", repeats=200))[0]
    assert screen.method == "analytic" and screen.repeats == 0 and sampled.repeats == 200
    for a, b in zip(screen.bars, sampled.bars):
        assert a.name == b.name
        assert abs(a.estimate.value - b.estimate.value) <= TOLERANCE + 3 * b.estimate.se, (a, b)
    assert sampled.bars[1].estimate.value > 0.002        # the noise flips predictions: the comparison means something
