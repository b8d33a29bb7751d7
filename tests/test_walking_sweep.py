"""Walking Noise sweeps end to end on the digits: the store, resume after SIGKILL of a real
process, Dask with two workers against a local run, the CLI and the HTML report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from exporters.torch_onnx import export_torch
from hwloop import cf
from hwloop.cli import main as cli
from hwloop.data import load_data
from hwloop.errors import HwloopError
from hwloop.walking.sweep import SweepSettings, open_sweep, run_sweep
from hwloop.walking.train import NoisyNet, TrainConfig, build_model, train

SIGMAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
TRAIN = dict(train_noise=True, model_def="tfc", epochs=4, data="digits@300", sites=(1, 7))
RESUME_SIGMAS = (0.1, 10.0, 1000.0)


@pytest.fixture(scope="module")
def tfc_digits(tmp_path_factory) -> Path:
    """The TFC (64-64-64-64-10 here) trained for 20 epochs on the digits training split (~83% test accuracy)."""
    module, shape = build_model("tfc", 64, 10, seed=0)
    net = train(NoisyNet(module, shape), load_data("digits+train"), TrainConfig(epochs=20), 1, 2)
    return export_torch(net.net, tmp_path_factory.mktemp("walk") / "tfc.onnx", torch.zeros(2, 64))


def same(a, b) -> None:
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_evaluation_sweep_store_and_no_recompute(tfc_digits, tmp_path, capsys):
    s = SweepSettings(sigmas=SIGMAS, data="digits", repeats=2, seed=3)
    out = run_sweep(s, tmp_path / "s.zarr", tfc_digits)
    ds = open_sweep(out)
    assert dict(ds.accuracy.sizes) == {"site": 8, "sigma": 6, "repeat": 2}
    assert ds.attrs["complete"] and cf.decode_attrs(ds.attrs)["settings"]["seed"] == 3 and len(ds.attrs["model_sha256"]) == 64
    clean = ds.attrs["clean_accuracy"]
    assert clean > 0.7
    # sigma 0.01 flips only samples on a decision boundary (at most 1% of 539); 1000 leaves chance
    # (10 classes: 0.1, binomial sd on 539 samples 0.013 -> 5 sd = 0.065)
    assert np.all(np.abs(ds.accuracy.isel(sigma=0).values - clean) <= 0.01)
    assert np.all(np.abs(ds.accuracy.isel(sigma=-1).values - 0.1) < 0.065)
    calls = []
    run_sweep(s, out, tfc_digits, progress=lambda d, t: calls.append(d))
    assert calls == []                      # every point was done: nothing recomputed
    with pytest.raises(HwloopError, match="repeats=2"):
        run_sweep(SweepSettings(sigmas=SIGMAS, data="digits", repeats=3, seed=3), out, tfc_digits)
    assert cli(["walk", "plan", str(out), "--budget", "16", "--sigma", "2", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:-1]    # a header line and a column line; a recommendation
    assert [ln.split()[0] for ln in lines] == ["uniform", "inv_mu", "inv_mu2", "inv_sqrt_mu", "log", "rank"]
    assert all(sum(map(int, ln.split()[3:])) == 16 for ln in lines)
    # a subset of sites gives exactly the full sweep's numbers there (keys do not depend on order)
    sub = open_sweep(run_sweep(SweepSettings(sigmas=SIGMAS, data="digits", repeats=2, seed=3, sites=(7, 0)),
                               tmp_path / "sub.zarr", tfc_digits))
    np.testing.assert_array_equal(sub.accuracy.values, ds.accuracy.sel(site=[7, 0]).values)


def test_global_mode_and_cli(tfc_digits, tmp_path, capsys):
    out = tmp_path / "g.zarr"
    assert cli(["walk", str(tfc_digits), "--mode", "global", "--sigmas", "0.01,1,100", "--data", "digits@200",
                "--repeats", "2", "--out", str(out), "--report", str(tmp_path / "g.html")]) == 0
    text = capsys.readouterr().out
    assert "global" in text and (tmp_path / "g.html").read_text().count("data:image/png") == 2
    ds = open_sweep(out)
    assert list(ds.site_name.values) == ["global"] and ds.accuracy.shape == (1, 3, 2)
    assert ds.accuracy.values[0, 0].min() > ds.accuracy.values[0, 2].max()
    assert cli(["walk", str(tfc_digits), "--noise", "pink", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "pink" in capsys.readouterr().err and not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_killed_sweep_resumed_equals_uninterrupted(tmp_path):
    """A real `hwloop walk` process (on its default local Dask cluster) is SIGKILLed mid-sweep, then resumed
    in this process (the same CLI ``main``, ``--workers 0``: no second cluster to start).

    What is tested is the store's resume (points done before the kill kept, the rest computed, bytes equal
    to an uninterrupted sweep, whichever executor ran them), not the training: 2 sites x 3 sigmas of a
    2-epoch training on 200 samples suffice (a point takes far longer than the 50 ms poll, so the kill
    always lands mid-sweep).
    """
    out = tmp_path / "killed.zarr"
    args = [sys.executable, "-m", "hwloop", "walk", "--train-noise", "--model-def", "tfc", "--epochs", "2",
            "--data", "digits@200", "--sites", "1,7", "--sigmas", ",".join(map(str, RESUME_SIGMAS)), "--out", str(out), "--workers", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = int(np.sum(~np.isnan(zarr.open_group(str(out), mode="r")["accuracy"][...])))
        except Exception:
            done = 0                                  # not created yet
        if done >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    left = int(np.sum(np.isnan(zarr.open_group(str(out), mode="r")["accuracy"][...])))
    assert 0 < left < 6
    assert cli(args[3:]) == 0
    resumed = open_sweep(out)
    settings = SweepSettings(sigmas=RESUME_SIGMAS, **{**TRAIN, "epochs": 2, "data": "digits@200"})
    whole = open_sweep(run_sweep(settings, tmp_path / "whole.zarr"))
    same(resumed, whole)
    assert resumed.attrs["complete"]


@pytest.mark.slow
def test_dask_two_workers_equal_local_and_report(tfc_digits, tmp_path, capsys):
    from dask.distributed import LocalCluster

    from hwloop.cluster import NO_DASHBOARD

    train_settings = SweepSettings(sigmas=(0.3, 3.0), repeats=2, **TRAIN)
    eval_settings = SweepSettings(sigmas=SIGMAS, data="digits", repeats=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, **NO_DASHBOARD) as cluster:
        dask_train = run_sweep(train_settings, tmp_path / "dt.zarr", scheduler=cluster.scheduler_address)
        dask_eval = run_sweep(eval_settings, tmp_path / "de.zarr", tfc_digits, scheduler=cluster.scheduler_address)
    same(open_sweep(dask_train), open_sweep(run_sweep(train_settings, tmp_path / "lt.zarr")))
    same(open_sweep(dask_eval), open_sweep(run_sweep(eval_settings, tmp_path / "le.zarr", tfc_digits)))
    ds = open_sweep(dask_train)
    assert dict(ds.weight_mag.sizes) == {"site": 2, "sigma": 2, "repeat": 2, "layer": 4}
    assert np.all(np.isfinite(ds.binarization.values)) and np.all((ds.binarization >= 0) & (ds.binarization <= 1))
    assert cli(["walk", "report", str(dask_train), "--report", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png") == 3 and "Weight magnitude" in page and "noisy training" in page
