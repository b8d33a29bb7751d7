"""`hwloop run --workers/--scheduler`: batches sharded on a real local Dask cluster (2 worker processes).

Same store bytes as one process; a worker SIGKILLed mid-run is survived; a client SIGKILLed
mid-run leaves a store that --resume completes to the same bytes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import kill_after_batches

from hwloop.cli import main
from hwloop.distributed import run_sharded
from hwloop.runner import run_model
from hwloop.store import open_run

pytest_plugins = ["tests.bench_fixtures"]

#: 539 digits test samples in batches of 7 -> 77 batches
RUN = ["--data", "digits", "--repeats", "3", "--seed", "11", "--batch-size", "7", "--profile", "semenova"]
N_BATCHES = 77


@pytest.fixture(scope="module")
def reference(cnn_onnx, tmp_path_factory) -> Path:
    """The same run in this one process."""
    out = tmp_path_factory.mktemp("ref") / "one.zarr"
    assert main(["run", str(cnn_onnx), *RUN, "--out", str(out)]) == 0
    return out


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, except the root metadata (start time, command line)."""
    out = {}
    for f in sorted(path.rglob("*")):
        rel = str(f.relative_to(path))
        if f.is_file() and rel != "zarr.json":
            out[rel] = f.read_bytes()
    return out


def markers(path: Path) -> int:
    """Finished batch markers (zarr writes <name>.<uuid>.partial, then renames it)."""
    d = path / "bookkeeping" / "batch_done" / "c"
    return sum(n.isdigit() for n in os.listdir(d)) if d.is_dir() else 0


def test_two_workers_write_the_same_store_bytes_as_one_process(cnn_onnx, reference, cluster, tmp_path):
    out = tmp_path / "dask.zarr"
    assert main(["run", str(cnn_onnx), *RUN, "--out", str(out), "--scheduler", cluster.scheduler_address]) == 0
    files = store_files(out)
    assert len(files) > 3 * N_BATCHES      # every array's chunk per batch is there
    assert files == store_files(reference)
    run = open_run(out)
    assert run.complete and run.attrs["dask"] == {"scheduler": cluster.scheduler_address}


def test_results_written_by_the_client_give_the_same_bytes(cnn_onnx, reference, cluster, tmp_path):
    """Workers that cannot see the store send their results back; the client writes them."""
    out = tmp_path / "client-writes.zarr"
    run_sharded(cnn_onnx, "digits", devices=_emulators(cnn_onnx), repeats=3, seed=11, batch_size=7, out=out,
                scheduler=cluster.scheduler_address, worker_writes=False)
    assert store_files(out) == store_files(reference)


def test_short_batches_give_the_same_bytes_on_single_threaded_workers(demo_onnx, cluster, tmp_path):
    """Batches of 3 samples x 3 repeats: 9-row products, a shape MKL sums differently on one thread (the
    workers) and on several (this process) unless hwloop.physics evens it out."""
    args = ["run", str(demo_onnx), "--data", "digits@60", "--repeats", "3", "--seed", "2", "--batch-size", "3",
            "--profile", "semenova"]        # no ADC: its rounding would hide a last-bit difference
    assert main([*args, "--out", str(tmp_path / "here.zarr")]) == 0
    assert main([*args, "--out", str(tmp_path / "dask.zarr"), "--scheduler", cluster.scheduler_address]) == 0
    assert store_files(tmp_path / "dask.zarr") == store_files(tmp_path / "here.zarr")


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_survived(cnn_onnx, reference, cluster, tmp_path):
    from dask.distributed import Client

    out = tmp_path / "killed-worker.zarr"
    with Client(cluster.scheduler_address) as client:
        pids = client.run(os.getpid)                 # worker address -> pid
    result: dict = {}

    def go():
        try:
            result["run"] = run_model(cnn_onnx, "digits", devices=_emulators(cnn_onnx), repeats=3, seed=11,
                                      batch_size=7, out=out, scheduler=cluster.scheduler_address)
        except BaseException as e:          # noqa: B036 -- reported below
            result["error"] = e

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 60
    while markers(out) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    killed_at = markers(out)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    t.join(120)
    assert "error" not in result, result.get("error")
    assert 5 <= killed_at < N_BATCHES, "the kill did not land mid-run"
    assert store_files(out) == store_files(reference)
    with Client(cluster.scheduler_address) as client:   # the nanny restarted the worker
        client.wait_for_workers(2, timeout=30)


@pytest.mark.slow
def test_a_client_killed_mid_run_resumes_to_the_same_bytes(cnn_onnx, reference, cluster, tmp_path):
    out = tmp_path / "killed-client.zarr"
    args = ["run", str(cnn_onnx), *RUN, "--out", str(out), "--scheduler", cluster.scheduler_address]
    done = kill_after_batches([sys.executable, "-m", "hwloop", *args], out, 5)
    assert 5 <= done.sum() < N_BATCHES
    partial = open_run(out)
    assert not partial.complete
    assert main([*args, "--resume"]) == 0
    assert store_files(out) == store_files(reference)


def test_a_chip_stays_on_its_machine(cnn_onnx, sim_bench, tmp_path, capsys):
    bench = tmp_path / "bench.yaml"
    bench.write_text(f'devices:\n  chip: {{resource: "{sim_bench.resource}"}}\n  twin: {{profile: ideal}}\n'
                     "default: twin\nlayers: {0: chip}\n")
    out = tmp_path / "x.zarr"
    assert main(["run", str(cnn_onnx), "--bench", str(bench), "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "layer 0 runs on VisaDevice" in err and "emulator runs only" in err
    assert not out.exists()


def _emulators(path):
    from hwloop.devices.emulator import emulators
    from hwloop.graph import load_model
    from hwloop.profiles import load_profile

    return emulators(load_profile("semenova"), load_model(path).layers)
