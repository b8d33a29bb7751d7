"""Nothing lost, nothing half-written: SIGKILL during --overwrite, one writer per store, leftovers,
completeness checked against the manifest, a consistent end of a run (real files, real processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from hwloop.cli import main
from hwloop.errors import HwloopError
from hwloop.files import atomic_dir, lock_path, store_lock
from hwloop.store import LayerInfo, RunWriter, open_run

R, N, BS, C = 2, 10, 4, 5   # 3 batches
LAYERS = [LayerInfo(0, "dense0", "Gemm+Sigmoid", "sigmoid", 6), LayerInfo(1, "dense1", "Gemm", "linear", C)]


def make(path, seed=1, **kw) -> RunWriter:
    attrs = {"model_sha256": "m", "data_sha256": "d", "seed": seed}
    return RunWriter.create(path, layers=LAYERS, n_samples=N, n_classes=C, batch_size=BS, repeats=R,
                            attrs=attrs, **kw)


def fill(w: RunWriter, seed: int, batches=range(3), finish=True) -> None:
    rng = np.random.default_rng(seed)
    for b in batches:
        n = min(BS, N - b * BS)
        out = rng.standard_normal((R, n, C)).astype(np.float32)
        w.write_batch(b, layers=[rng.standard_normal((R, n, 6)).astype(np.float32), out],
                      clean=[rng.standard_normal((n, 6)).astype(np.float32), out[0]], output=out,
                      clean_output=out[0], labels=rng.integers(0, C, n))
    if finish:
        w.finish()


def complete_store(path, seed=1):
    fill(make(path, seed=seed), seed)
    return open_run(path)


# -- SIGKILL during --overwrite ---------------------------------------------------------------
KILLER = textwrap.dedent("""
    import os, signal, sys
    import hwloop.files as files
    from tests.test_store_integrity import make, fill
    stage = sys.argv[2]

    class Os:                                  # os as hwloop.files sees it: SIGKILL at one step
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, a, b):
            os.replace(a, b)
            if stage == "aside" and str(a).endswith("r.zarr") or stage == "in" and str(b).endswith("r.zarr"):
                os.kill(os.getpid(), signal.SIGKILL)
    files.os = Os()
    if stage == "delete":                      # killed half-way through deleting the old store
        def remove(p):
            __import__("shutil").rmtree(p / "layers")
            os.kill(os.getpid(), signal.SIGKILL)
        files._remove = remove
    fill(make(sys.argv[1], seed=2, overwrite=True), 2)
""")


@pytest.mark.parametrize("stage", ["aside", "in", "delete"])
def test_sigkill_during_overwrite_keeps_old_or_new(tmp_path, stage, capsys):
    path = tmp_path / "r.zarr"
    old = complete_store(path, seed=1)
    old_out = old.output.values
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), stage], cwd=root,
                          env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run = open_run(path)            # a reader first: the store is whole, old or new, never between
    if stage == "aside":            # killed with the old store aside: the reader put it back
        assert run.attrs["seed"] == 1 and run.complete
        np.testing.assert_array_equal(run.output.values, old_out)
    else:                           # the new store is in place, empty and whole
        assert run.attrs["seed"] == 2 and not run.complete
    with store_lock(path):          # the next writer clears what the kill left, and says so
        pass
    leftover = [p.name for p in tmp_path.iterdir() if p.name != "r.zarr"]
    assert leftover == []
    if stage != "aside":
        assert "left by an interrupted write" in capsys.readouterr().err


def test_overwrite_renames_the_old_store_aside_until_the_new_one_is_in(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "old").write_text("1")
    with atomic_dir(path) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("2")
        assert (path / "old").exists()          # nothing deleted while the new one is being built
    assert [p.name for p in path.iterdir()] == ["new"] and sorted(os.listdir(tmp_path)) == ["s"]


# -- one writer per store ---------------------------------------------------------------------
def test_second_writer_gets_one_line_and_exit_2(tmp_path, mlp_onnx, capsys):
    out = tmp_path / "r.zarr"
    with store_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        rc = main(["run", str(mlp_onnx), "--data", "digits@20", "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "in use by another writer" in err, err
        assert f"pid {os.getpid()}" in err and socket.gethostname() in err
        assert not out.exists()
    assert not lock_path(out).exists()
    assert main(["run", str(mlp_onnx), "--data", "digits@20", "--out", str(out)]) == 0   # free again


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r.zarr"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with store_lock(out) as notes:
        assert any("stale lock" in n for n in notes)
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    # a lock file naming a live process (that holds no flock: another tool, another host) is respected
    lock_path(out).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(HwloopError, match="in use by another writer.*delete the lock file only"):
        with store_lock(out):
            pass


@pytest.mark.slow
def test_two_concurrent_writers_exactly_one_succeeds(tmp_path, demo_onnx):
    out = tmp_path / "r.zarr"
    args = [sys.executable, "-m", "hwloop", "run", str(demo_onnx), "--data", "digits@120", "--repeats", "10",
            "--batch-size", "10", "--seed", "3", "--profile", "semenova", "--out", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(120), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2).strip()
    assert len(err.splitlines()) == 1 and ("in use by another writer" in err or "output exists" in err), err
    ref = tmp_path / "ref.zarr"
    assert main(args[3:-1] + [str(ref)]) == 0
    a, b = open_run(out), open_run(ref)
    assert a.complete and a.attrs["seed"] == 3
    for k in range(len(a.layer_names)):
        np.testing.assert_array_equal(a.layer(k).values, b.layer(k).values)
    np.testing.assert_array_equal(a.accuracy.values, b.accuracy.values)


# -- leftovers ---------------------------------------------------------------------------------
def test_partial_leftovers_are_removed_by_the_next_run_and_said(tmp_path, mlp_onnx, capsys):
    out = tmp_path / "r.zarr"
    junk = tmp_path / ".r.zarr.0123abcd.partial"
    (junk / "output").mkdir(parents=True)
    other = tmp_path / ".other.zarr.0123abcd.partial"    # another store's: not ours to touch
    other.mkdir()
    assert main(["run", str(mlp_onnx), "--data", "digits@20", "--out", str(out)]) == 0
    assert not junk.exists() and other.exists()
    assert "removed .r.zarr.0123abcd.partial" in capsys.readouterr().err


def test_demo_with_a_bad_option_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--profile", "no-such-profile"]) == 2
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(out), "--repeats", "0"])
    assert e.value.code == 2 and not out.exists()
    assert "--repeats: must be at least 1" in capsys.readouterr().err


# -- completeness against the manifest ----------------------------------------------------------
def test_readers_refuse_a_store_with_arrays_missing(tmp_path, capsys):
    path = tmp_path / "r.zarr"
    complete_store(path)
    for name in ("accuracy", "label", "prediction"):   # what a half-deleted store lost (markers all set)
        shutil.rmtree(path / name)
    with pytest.raises(HwloopError, match=r"damaged run store: array '\w+' is missing"):
        open_run(path)
    assert main(["analyze", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "damaged run store" in err and len(err.splitlines()) == 1
    with pytest.raises(HwloopError, match="damaged run store"):
        RunWriter.resume(path, {"model_sha256": "m", "data_sha256": "d", "seed": 1, "n_samples": N, "repeats": R,
                                "batch_size": BS, "profile_sha256": None})


def test_marked_batch_with_lost_chunks_is_refused_then_rewritten_by_resume(tmp_path):
    path = tmp_path / "r.zarr"
    ref = complete_store(path)
    labels = ref.labels.values.copy()
    (path / "label" / "c" / "1").unlink()
    with pytest.raises(HwloopError, match="batch 1 is marked done but some of its data is missing"):
        open_run(path)
    expect = {"model_sha256": "m", "data_sha256": "d", "seed": 1, "n_samples": N, "repeats": R,
              "batch_size": BS, "profile_sha256": None}
    w = RunWriter.resume(path, expect)
    assert list(w.done()) == [True, False, True]
    fill(w, 1)                                        # the same data again (same seed)
    np.testing.assert_array_equal(open_run(path).labels.values, labels)


def test_all_zero_chunks_are_written_so_completeness_can_be_checked(tmp_path):
    path = tmp_path / "r.zarr"
    w = make(path)
    z = np.zeros((R, BS, C), np.float32)
    w.write_batch(0, layers=[np.zeros((R, BS, 6), np.float32), z], clean=[np.zeros((BS, 6), np.float32), z[0]],
                  output=z, clean_output=z[0], labels=np.full(BS, 3))     # every prediction wrong: correct == 0
    assert (path / "correct" / "c" / "0" / "0").is_file()
    assert open_run(path).accuracy.values.tolist() == [0.0, 0.0]


# -- the end of a run -----------------------------------------------------------------------------
def test_accuracy_is_written_before_the_last_marker(tmp_path):
    path = tmp_path / "r.zarr"
    w = make(path)
    fill(w, 4, batches=[0, 2], finish=False)
    assert np.isnan(zarr.open_group(str(path))["accuracy"][:]).all()     # incomplete: no accuracy yet
    fill(w, 4, batches=[1], finish=False)                                 # the last batch, no finish()
    run = open_run(path)
    assert run.complete
    acc = zarr.open_group(str(path))["accuracy"][:]
    np.testing.assert_allclose(acc, run.accuracy.values)                 # every visible state consistent


def test_complete_store_without_accuracy_is_refused_and_resume_repairs_it(tmp_path):
    path = tmp_path / "r.zarr"
    complete_store(path)
    zarr.open_group(str(path))["accuracy"][:] = np.nan     # what a kill in an older version's finish left
    with pytest.raises(HwloopError, match="not finalised"):
        open_run(path)
    expect = {"model_sha256": "m", "data_sha256": "d", "seed": 1, "n_samples": N, "repeats": R,
              "batch_size": BS, "profile_sha256": None}
    RunWriter.resume(path, expect).finish()
    assert np.isfinite(open_run(path).accuracy.values).all()


# -- the same lock on sweeps and calibration stores -----------------------------------------------
pytest_plugins = ["tests.bench_fixtures"]


def test_sweep_and_calibration_stores_take_the_same_lock(tmp_path, mlp_onnx, make_bench, capsys):
    from hwloop.calibration import calibrate, open_chip

    sweep = tmp_path / "s.zarr"
    with store_lock(sweep):
        assert main(["walk", str(mlp_onnx), "--sigmas", "0.1", "--data", "digits@20", "--out", str(sweep)]) == 2
        assert "in use by another writer" in capsys.readouterr().err and not sweep.exists()
    bench = make_bench(max_inputs=8, max_outputs=8)
    chip = open_chip(bench.resource)
    cal = tmp_path / "c.zarr"
    try:
        with store_lock(cal):
            with pytest.raises(HwloopError, match="in use by another writer"):
                calibrate(chip, tmp_path / "p.yaml", store=cal, budget=20_000, stop_after=1)
        assert not cal.exists()
        calibrate(chip, tmp_path / "p.yaml", store=cal, budget=20_000, stop_after=2)
        assert cal.exists() and not lock_path(cal).exists()
    finally:
        chip.device.close()
    # readers check the manifest: a marked block whose data is gone is refused
    from hwloop.calibration.measure import CalibrationStore

    done = np.flatnonzero(CalibrationStore(cal).done)
    shutil.rmtree(cal / "blocks" / str(done[0]))
    with pytest.raises(HwloopError, match=f"block {done[0]} is marked done but missing"):
        CalibrationStore(cal)
    # and so do sweep readers
    assert main(["walk", str(mlp_onnx), "--sigmas", "0.1", "--data", "digits@20", "--out", str(sweep)]) == 0
    shutil.rmtree(sweep / "accuracy")
    capsys.readouterr()
    assert main(["walk", "report", str(sweep)]) == 2
    assert "damaged sweep store: array 'accuracy' is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_random_sigkills_of_a_real_overwrite_never_leave_a_mix(tmp_path, mlp_onnx):
    """Kill -9 `hwloop run --overwrite` at seeded random moments around the replacement of the store."""
    import time

    path = tmp_path / "r.zarr"
    base = [sys.executable, "-m", "hwloop", "run", str(mlp_onnx), "--data", "digits@60", "--batch-size", "6",
            "--repeats", "2", "--out", str(path)]
    assert main(base[3:] + ["--seed", "1"]) == 0          # the store there before (no need for a process)
    rng = np.random.default_rng(5)
    for seed in (2, 3):
        before = open_run(path)
        before_seed, before_values = before.attrs["seed"], before.layer(0).values
        proc = subprocess.Popen(base + ["--seed", str(seed), "--overwrite"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while proc.poll() is None and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
            time.sleep(0.001)                     # the new store is being built: kill around its rename
        time.sleep(float(rng.uniform(0, 0.03)))
        proc.kill()
        proc.wait()
        run = open_run(path)                      # whole: the store that was there, or the new one
        if run.attrs["seed"] == before_seed:
            assert np.array_equal(run.layer(0).values, before_values)
        else:
            assert run.attrs["seed"] == seed and run.layer(0).sizes["sample"] <= 60
        with store_lock(path):
            pass
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]
