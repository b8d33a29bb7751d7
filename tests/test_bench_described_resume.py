"""SIGKILL + ``--resume`` on the source/measure bench (awg-digitizer, YAML only): two simulated instruments
on real TCP sockets through real pyvisa; the resumed store equals an uninterrupted run byte for byte."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import killed_then_resumed
from test_bench_described_source_measure import fixed_weight_run, instruments  # noqa: F401 (instruments: a fixture)



@pytest.mark.slow
def test_sigkill_then_resume_on_the_source_measure_bench(instruments, tmp_path):  # noqa: F811
    fixed_weight_run(tmp_path, instruments(), samples=120)
    args = ["run", str(tmp_path / "m.onnx"), "--bench", str(tmp_path / "bench.yaml"),
            "--data", f"npz:{tmp_path / 'd.npz'}", "--repeats", "2", "--batch-size", "2", "--seed", "3"]  # 60 batches
    a, b = killed_then_resumed(args, tmp_path)
    assert b.complete and b.attrs["devices"][0]["dialect"] == "awg-digitizer"
    # the ideal chip is deterministic: the same bytes, every batch once
    assert np.asarray(a.layer(0)).tobytes() == np.asarray(b.layer(0)).tobytes()
    assert np.asarray(b.layer(0)).std(axis=0).max() == 0 and np.abs(np.asarray(b.layer(0))).max() > 0.1
