"""Measured statistics of runs: the estimators recover what the emulator was told to do, from real run stores.

Tolerances come from the sample sizes: an intensity estimated from n
independent squared fluctuations has a relative standard error of about
sqrt(2 / n); the n of each check is given beside it.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hwloop.analysis import analyze_run, average_repeats, layer_table
from hwloop.analysis.networks import dense_onnx, random_weights
from hwloop.cli import main
from hwloop.data import Dataset
from hwloop.devices import Emulator
from hwloop.errors import HwloopError
from hwloop.graph import load_model
from hwloop.runner import run_model
from hwloop.store import open_run

from helpers import profile



def one_layer_run(tmp_path, prof, repeats=4000, n_samples=16, seed=0, out=None):
    """A single 64-neuron linear layer whose clean outputs spread over [0.1, 1.9] (so m^2 varies)."""
    rng = np.random.default_rng(seed)
    w = np.eye(64, dtype=np.float32)
    model = load_model(dense_onnx(tmp_path / "one.onnx", [w]))
    x = rng.uniform(0.1, 1.9, (n_samples, 64)).astype(np.float32)
    data = Dataset("inputs", x, np.zeros(n_samples, np.int64), 64)
    return run_model(model, data, devices={0: Emulator(prof)}, repeats=repeats, seed=seed, out=out)


def test_four_intensities_are_recovered_from_a_mixed_run(tmp_path):
    # All four terms at once.  Correlated: n = R * B = 6.4e4 draws -> ~0.6%
    # standard error; uncorrelated: n = R * B * N ~ 4e6.  The fits are
    # least squares over these, so 10% is a generous but still failing bound
    # (dropping the x_i x_j form of D_MC biases cm_additive by ~D_MC * <m>^2 = 100%).
    d = dict(D_A=1e-3, D_M=2e-3, D_AC=4e-4, D_MC=3e-4)
    ds = analyze_run(one_layer_run(tmp_path, profile(**d)))
    assert ds["ind_additive"].item() == pytest.approx(d["D_A"], rel=0.1)
    assert ds["ind_multiplicative"].item() == pytest.approx(d["D_M"], rel=0.1)
    assert ds["cm_additive"].item() == pytest.approx(d["D_AC"], rel=0.1)
    assert ds["cm_multiplicative"].item() == pytest.approx(d["D_MC"], rel=0.1)
    # the total-variance regression sees additive = D_A + D_AC and multiplicative = D_M + D_MC
    assert ds["fit_additive"].item() == pytest.approx(d["D_A"] + d["D_AC"], rel=0.1)
    assert ds["fit_multiplicative"].item() == pytest.approx(d["D_M"] + d["D_MC"], rel=0.1)
    m2 = ds["output_mean"].values[0].astype(np.float64) ** 2
    cm_expect = d["D_AC"] + d["D_MC"] * np.mean(
        (ds["output_mean"].values[0].sum(1) ** 2 - m2.sum(1)) / (64 * 63))
    assert ds["cm_var"].item() == pytest.approx(cm_expect, rel=0.05)


@pytest.mark.parametrize("noise,common", [({"D_A": 1e-3}, False), ({"D_AC": 1e-3}, True)])
def test_common_mode_split_tells_correlated_from_uncorrelated(tmp_path, noise, common):
    ds = analyze_run(one_layer_run(tmp_path, profile(**noise), repeats=2000))
    frac = ds["cm_fraction"].item()
    # n = 2000 * 16 = 3.2e4 repetition-sample pairs: the common share is 1 +- 1%, or 0 +- 1/sqrt(n * N)
    assert frac == pytest.approx(1.0 if common else 0.0, abs=0.03)


def test_snr_and_mean_follow_the_signal(tmp_path):
    res = one_layer_run(tmp_path, profile(D_A=1e-2), repeats=1000)
    ds = analyze_run(res)
    mean, var = ds["output_mean"].values[0], ds["output_variance"].values[0]
    # a mean over 1000 repetitions of std 0.1 has error 0.0032; the largest of
    # 1024 such values stays below 5 errors (a 1 in 3e6 event per value)
    assert np.max(np.abs(mean - res.clean_layers[0])) < 5 * 0.1 / np.sqrt(1000)
    assert ds["offset_rms"].item() < 0.1 / np.sqrt(1000) * 1.2
    snr = 10 * np.log10(mean ** 2 / var)
    np.testing.assert_allclose(ds["output_snr_db"].values[0], snr)
    assert ds["snr_db_median"].item() == pytest.approx(np.median(snr))
    assert ds["snr_db_q25"].item() < ds["snr_db_median"].item() < ds["snr_db_q75"].item()
    np.testing.assert_allclose(ds["neuron_snr_db"].values[0], np.median(snr, axis=0))
    np.testing.assert_allclose(ds["neuron_snr"].values[0], 10 ** (np.median(snr, axis=0) / 20))


def test_shot_noise_term_is_fitted_when_asked(tmp_path):
    # variance = D_A + shot * |m|: n = R * B * N = 1e6 values
    ds = analyze_run(one_layer_run(tmp_path, profile(D_A=1e-4, shot=2e-3), repeats=1000), shot=True)
    assert ds["fit_shot"].item() == pytest.approx(2e-3, rel=0.05)
    assert ds["fit_additive"].item() == pytest.approx(1e-4, rel=0.3, abs=5e-5)


def test_accuracy_and_flip_rate_from_a_stored_run(demo_onnx, tmp_path):
    from hwloop.profiles import load_profile

    out = tmp_path / "run.zarr"
    devices = {k: Emulator(load_profile("semenova")) for k in range(3)}
    run_model(demo_onnx, "digits@60", devices=devices, repeats=50, seed=3, out=out)
    run = open_run(out)
    ds = analyze_run(run)
    acc = np.asarray(run.accuracy)
    np.testing.assert_allclose(ds["accuracy"].values, acc)
    assert ds.attrs["accuracy_mean"] == pytest.approx(acc.mean())
    flips = (np.asarray(run.output).argmax(-1) != np.asarray(run.clean_output).argmax(-1)[None]).mean(1)
    np.testing.assert_allclose(ds["flip_rate"].values, flips)
    assert ds.sizes["layer"] == 3 and list(ds["layer_name"].values) == run.layer_names
    text = layer_table(ds)
    assert "accuracy" in text and run.layer_names[0] in text


def test_average_repeats_groups_consecutive_repetitions():
    y = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    avg = average_repeats(y, 3)
    np.testing.assert_array_equal(avg[0], y[:3].mean(0))
    np.testing.assert_array_equal(avg[1], y[3:].mean(0))
    with pytest.raises(HwloopError, match="groups of 7"):
        average_repeats(y, 7)


def test_one_repetition_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(HwloopError, match="at least 2 repetitions"):
        analyze_run(one_layer_run(tmp_path, profile(D_A=1e-3), repeats=1))


def test_analyze_cli_writes_netcdf_table_and_report_with_prediction(demo_onnx, tmp_path, capsys):
    from hwloop.profiles import load_profile

    out = tmp_path / "run.zarr"
    devices = {k: Emulator(load_profile("semenova")) for k in range(3)}
    run_model(demo_onnx, "digits@30", devices=devices, repeats=400, seed=1, out=out)
    report = tmp_path / "report.html"
    assert main(["analyze", str(out), "--report", str(report), "--predict"]) == 0
    text = capsys.readouterr().out
    assert "pred/meas" in text
    ds = xr.open_dataset(tmp_path / "run.analysis.nc", engine="scipy")
    assert ds.sizes["layer"] == 3 and "cm_var" in ds
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 4
    # the prediction read model, profile and data from the provenance and agrees
    # (400 repetitions x 30 samples: n_eff >= 1.2e4 -> ~1.3% error; 10% as in the issue)
    ratios = [float(line.split()[-1]) for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert len(ratios) == 3 and all(abs(r - 1) < 0.1 for r in ratios)


def test_analyze_cli_refuses_what_is_not_a_run_store(tmp_path, capsys):
    bad = tmp_path / "nothing.zarr"
    bad.mkdir()
    assert main(["analyze", str(bad), "--report", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing.zarr" in err[0]
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "nothing.analysis.nc").exists()


def test_prediction_for_a_run_refuses_different_data(demo_onnx, tmp_path, capsys):
    from hwloop.profiles import load_profile

    out = tmp_path / "run.zarr"
    run_model(demo_onnx, "digits@10", devices={k: Emulator(load_profile("semenova")) for k in range(3)},
              repeats=5, seed=1, out=out)
    assert main(["analyze", str(out), "--predict", "--data", "digits+train@10"]) == 2
    assert "does not reproduce" in capsys.readouterr().err


def test_noise_free_run_reports_zero_noise_and_infinite_snr(tmp_path, capsys):
    ds = analyze_run(one_layer_run(tmp_path, profile(), repeats=3))
    assert ds["var_mean"].item() == 0 and ds["cm_var"].item() == 0
    assert np.isinf(ds["snr_db_median"].item())
    assert "nan" in layer_table(ds) or "inf" in layer_table(ds)
