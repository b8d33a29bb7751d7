"""Walking Noise injection sites and noise: numbering on real ONNX/torch models, noise statistics,
and the clean-prefix reuse of the ONNX evaluator (real onnxruntime throughout)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporters.models import TFC, seeded
from hwloop.cli import main as cli
from hwloop.errors import HwloopError
from hwloop.walking.evaluate import SiteModel
from hwloop.walking.sites import Noise, add_noise, load_onnx, onnx_sites
from hwloop.walking.sweep import parse_sigmas
from hwloop.walking.train import NoisyNet, torch_noise


def ops(path) -> list[str]:
    return [s.op for s in onnx_sites(load_onnx(path))]


def test_sites_of_exported_and_handbuilt_models(mlp_onnx, handbuilt_onnx, cnn_onnx, mlp_bn_onnx):
    assert ops(mlp_onnx) == ["input", "Gemm", "Sigmoid", "Gemm", "Tanh", "Gemm", "Relu", "Gemm"]
    # MatMul + constant Add is one product: the site is after the bias
    sites = onnx_sites(load_onnx(handbuilt_onnx))
    assert [s.name for s in sites] == ["input", "a1", "h1", "a2", "h2", "output"]
    assert [s.shape for s in sites] == [(64,), (32,), (32,), (16,), (16,), (10,)]
    # Flatten is data movement, not a site; BatchNorm and MaxPool are
    assert ops(cnn_onnx) == ["input", "Conv", "BatchNormalization", "Relu", "MaxPool",
                             "Conv", "BatchNormalization", "Relu", "MaxPool", "Gemm"]
    assert ops(mlp_bn_onnx) == ["input", "Gemm", "BatchNormalization", "Relu",
                                "Gemm", "BatchNormalization", "Relu", "Gemm"]


def test_torch_wrapper_numbers_sites_like_the_onnx_export(mlp_bn_onnx):
    with seeded(4):
        net = NoisyNet(TFC(batchnorm=True, in_features=64, hidden=16, depth=2), (64,))
    onnx_ops = ops(mlp_bn_onnx)
    torch_ops = [s.op for s in net.sites]
    assert len(torch_ops) == len(onnx_ops)
    assert torch_ops == ["input", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_noise_statistics_and_seeding():
    x = np.full((400, 250), 2.0, dtype=np.float32)   # 1e5 draws: std estimates within ~0.5%, allow 3%
    add = add_noise(x, Noise("additive", 0.5), np.random.default_rng(1))
    assert abs((add - x).mean()) < 3 * 0.5 / np.sqrt(x.size) + 1e-6
    assert (add - x).std() == pytest.approx(0.5, rel=0.03)
    mul = add_noise(x, Noise("multiplicative", 0.5), np.random.default_rng(1))
    assert (mul / x).std() == pytest.approx(0.5, rel=0.03)
    # combined, r = 0.25: s_add = 0.25 A, s_mul = 0.75 A; variance = (2 s_mul)^2 + s_add^2
    comb = add_noise(x, Noise("combined", 0.4, ratio=0.25), np.random.default_rng(1))
    assert comb.std() == pytest.approx(np.hypot(2 * 0.3, 0.1), rel=0.03)
    # averaging k copies divides the standard deviation by sqrt(k)
    avg = add_noise(x, Noise("additive", 0.5), np.random.default_rng(1), copies=4)
    assert (avg - x).std() == pytest.approx(0.25, rel=0.03)
    # correlated: one draw per sample, shared by all its neurons
    cor = add_noise(x, Noise("additive", 0.5, correlated=True), np.random.default_rng(1)) - x
    assert np.all(cor == cor[:, :1]) and cor[:, 0].std() == pytest.approx(0.5, rel=0.2)  # 400 draws: ~3.5% se
    # same key, same numbers; another key, others
    assert np.array_equal(add, add_noise(x, Noise("additive", 0.5), np.random.default_rng(1)))
    assert not np.array_equal(add, add_noise(x, Noise("additive", 0.5), np.random.default_rng(2)))
    t = torch_noise(torch.from_numpy(x), Noise("combined", 0.4, ratio=0.25), torch.Generator().manual_seed(0))
    assert float(t.std()) == pytest.approx(np.hypot(2 * 0.3, 0.1), rel=0.03)


def test_bad_noise_settings_are_refused():
    with pytest.raises(HwloopError, match="kind"):
        Noise("gaussian", 1.0)
    with pytest.raises(HwloopError, match="ratio"):
        Noise("combined", 1.0, ratio=1.5)
    with pytest.raises(HwloopError, match="logspace"):
        parse_sigmas("logspace:0:1:5")
    assert parse_sigmas("logspace:1e-2:1e8:41")[::20] == pytest.approx((1e-2, 1e3, 1e8))
    assert parse_sigmas("linspace:0:6:4") == pytest.approx((0, 2, 4, 6))
    assert parse_sigmas("0.1,1") == (0.1, 1.0)


@pytest.mark.parametrize("fixture", ["cnn_onnx", "cnn_dynamo_onnx"])
def test_suffix_from_clean_cache_equals_full_noisy_run(fixture, request, digits):
    path = request.getfixturevalue(fixture)
    model = SiteModel(path)
    x = digits.x[:64]
    cache = model.clean(x)
    full = ort.InferenceSession(str(path)).run(None, {"input": x.reshape(-1, 1, 8, 8)})[0]
    np.testing.assert_allclose(cache[model.output], full, rtol=1e-5, atol=1e-5)
    before = {k: v.copy() for k, v in cache.items()}
    for site in (0, len(model.sites) // 3, 2 * len(model.sites) // 3, len(model.sites) - 1):
        noise = {site: Noise("additive", 0.3)}
        a = model.run(noise, np.random.default_rng(5), cache=cache)
        b = model.run(noise, np.random.default_rng(5), x=x)
        np.testing.assert_array_equal(a, b)          # reusing the prefix changes nothing
        assert np.abs(a - full).max() > 1e-3         # and the noise did arrive
    assert all(np.array_equal(before[k], cache[k]) for k in before)   # the cache is never modified
    # noise at the logits only: the output moves by exactly the drawn noise
    last = len(model.sites) - 1
    out = model.run({last: Noise("additive", 0.7)}, np.random.default_rng(9), cache=cache)
    drawn = 0.7 * np.random.default_rng(9).standard_normal(full.shape, dtype=np.float32)
    np.testing.assert_allclose(out - full, drawn, atol=1e-5)


def test_train_and_eval_noise_switches():
    with seeded(0):
        net = NoisyNet(TFC(in_features=16, hidden=8, depth=1, n_classes=4), (16,))
    x = torch.ones(5, 16)
    net.noise_at = {1: Noise("additive", 1.0)}
    net.eval()
    noisy = net(x)
    net.eval_noise = False
    clean = net(x)
    assert not torch.equal(noisy, clean)
    net.noise_at = {}
    assert torch.equal(net(x), clean)
    net.noise_at = {1: Noise("additive", 1.0)}
    net.train()
    net.train_noise = False
    assert torch.equal(net(x), clean)


def test_cli_lists_sites_and_reports_bad_models(mlp_onnx, tmp_path, capsys):
    assert cli(["walk", str(mlp_onnx), "--list-sites"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["site", "op", "shape"] and len(out) == 9
    assert out[1].split()[:2] == ["0", "input"] and out[-1].split()[1] == "Gemm"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert cli(["walk", str(bad), "--list-sites"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
