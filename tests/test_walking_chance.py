"""Walking Noise words: a model already at chance gets a warning instead of meaningful-looking midpoints,
and `walk plan` on a sweep of some sites says to walk every site."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from exporters.torch_onnx import export_torch
from hwloop.cli import main as cli
from hwloop.data import load_data
from hwloop.walking.midpoint import at_chance


@pytest.fixture(scope="module")
def linear_models(tmp_path_factory) -> tuple[Path, Path]:
    """A logistic regression on the digits (~95% test accuracy) and the same model with its weights zeroed
    (constant scores: always class 0, accuracy = that class's share, ~0.1)."""
    train = load_data("digits+train")
    lr = LogisticRegression(max_iter=2000).fit(train.x, train.y)
    net = torch.nn.Linear(64, 10)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(lr.coef_, dtype=torch.float32))
        net.bias.copy_(torch.tensor(lr.intercept_, dtype=torch.float32))
    d = tmp_path_factory.mktemp("chance")
    good = export_torch(net, d / "good.onnx", torch.zeros(2, 64))
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
    return good, export_torch(net, d / "flat.onnx", torch.zeros(2, 64))


def test_at_chance_allows_a_few_binomial_standard_errors():
    # 10 classes on 539 samples: one standard error of a chance accuracy is sqrt(0.09 / 539) = 0.0129
    assert at_chance(0.1, 10, 539) and at_chance(0.138, 10, 539)
    assert not at_chance(0.139, 10, 539) and not at_chance(0.9, 10, 539)
    assert at_chance(0.1, 10, None) and not at_chance(0.11, 10, None)     # sample count unknown: at or below


def _walk(model: Path, out: Path, capsys, *extra: str) -> tuple[str, str]:
    assert cli(["walk", str(model), "--sigmas", "0.1,10,1000", "--data", "digits@200", "--out", str(out),
                *extra]) == 0
    cap = capsys.readouterr()
    return cap.out, cap.err


def test_a_model_at_chance_is_warned_about_once_and_marked_on_the_page(linear_models, tmp_path, capsys):
    good, flat = linear_models
    _, err = _walk(good, tmp_path / "good.zarr", capsys, "--report", str(tmp_path / "good.html"))
    assert "warning" not in err
    assert "meaningless" not in (tmp_path / "good.html").read_text()
    _, err = _walk(flat, tmp_path / "flat.zarr", capsys, "--report", str(tmp_path / "flat.html"))
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "at chance (1/10 = 0.1000, within 3 standard errors" in warnings[0] and "meaningless" in warnings[0]
    page = (tmp_path / "flat.html").read_text()
    assert "most fragile site" in page and page.count("meaningless") >= 2     # the summary and the midpoint note
    assert cli(["walk", "report", str(tmp_path / "flat.zarr")]) == 0
    assert capsys.readouterr().err.count("meaningless") == 1


def test_plan_on_a_sweep_of_some_sites_says_to_walk_every_site(linear_models, tmp_path, capsys):
    good, _ = linear_models
    _walk(good, tmp_path / "some.zarr", capsys, "--sites", "0")
    assert cli(["walk", "plan", str(tmp_path / "some.zarr"), "--budget", "8", "--sigma", "1"]) == 2
    err = capsys.readouterr().err
    assert "walked site(s) 0 of the model's" in err and "walk the model again without --sites" in err
    assert len(err.strip().splitlines()) == 1
