"""SIGKILL + ``--resume`` on the source/measure bench (awg-digitizer, YAML only): two simulated instruments
on real TCP sockets through real pyvisa; the resumed store equals an uninterrupted run byte for byte."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import kill_after_batches
from test_bench_described_source_measure import fixed_weight_run, instruments  # noqa: F401 (instruments: a fixture)

from hwloop.cli import main
from hwloop.store import open_run


@pytest.mark.slow
def test_sigkill_then_resume_on_the_source_measure_bench(instruments, tmp_path):  # noqa: F811
    fixed_weight_run(tmp_path, instruments(), samples=120)
    args = ["run", str(tmp_path / "m.onnx"), "--bench", str(tmp_path / "bench.yaml"),
            "--data", f"npz:{tmp_path / 'd.npz'}", "--repeats", "2", "--batch-size", "2", "--seed", "3"]  # 60 batches
    full, killed = tmp_path / "full.zarr", tmp_path / "killed.zarr"
    assert main([*args, "--out", str(full)]) == 0
    done = kill_after_batches([sys.executable, "-m", "hwloop", *args, "--out", str(killed)], killed, 5)
    assert 5 <= done.sum() < len(done)
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    a, b = open_run(full), open_run(killed)
    assert b.complete and b.attrs["devices"][0]["dialect"] == "awg-digitizer"
    # the ideal chip is deterministic: the same bytes, every batch once
    assert np.asarray(a.layer(0)).tobytes() == np.asarray(b.layer(0)).tobytes()
    assert np.asarray(b.layer(0)).std(axis=0).max() == 0 and np.abs(np.asarray(b.layer(0))).max() > 0.1
