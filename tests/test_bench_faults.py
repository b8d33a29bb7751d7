"""Runs on the simulated bench survive every injected fault: nothing lost, nothing recorded twice.

The chip is noise-free, so a correct run equals the ideal emulator's run within the ADC steps; a
batch lost, duplicated or taken from a garbled/stale reply would not.  Faults are armed at a
command count that falls in the middle of the run (about 70 commands per batch here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hwloop.bench import Faults, VisaDevice
from hwloop.cli import main
from hwloop.errors import DeviceError
from hwloop.graph import load_model
from hwloop.runner import run_model
from hwloop.store import open_run

from helpers import hwloop

pytest_plugins = ["tests.bench_fixtures"]

DATA, REPEATS, BATCH = "digits@60", 3, 20
FAST = dict(timeout_ms=300, backoff_s=0.02, max_backoff_s=0.2)   # 5 retries: 0.5 s of back-off


@pytest.fixture(scope="module")
def reference(mlp_onnx):
    return run_model(mlp_onnx, DATA, repeats=REPEATS, seed=0, batch_size=BATCH)


def chip_devices(bench, model, **opts) -> dict:
    """Every analog layer on one chip (siblings share the connection; the chip is reprogrammed per layer)."""
    first = VisaDevice(bench.resource, **{**FAST, **opts})
    return {L.index: first if L.index == 0 else first.sibling() for L in model.layers}


def each_fault(after: int, variants: bool = False):
    """Parametrize (faults, kind) with every kind of fault, armed at command ``after``; ``variants``
    adds a refused reconnection after the drop and the other two ways of corrupting a block."""
    cases = [("drop", Faults(drop_after=after), "drop"),
             ("drop+refuse", Faults(drop_after=after, refuse_s=0.5), "drop"),
             ("delay", Faults(delay_after=after, delay_s=0.6), "delay"),    # past the 300 ms timeout: a stale reply
             ("corrupt-bytes", Faults(corrupt_after=after, corrupt_mode="bytes"), "corrupt"),
             ("corrupt-nan", Faults(corrupt_after=after, corrupt_mode="nan"), "corrupt"),
             ("corrupt-short", Faults(corrupt_after=after, corrupt_mode="short"), "corrupt"),
             ("error", Faults(error_after=after, error_code=-221), "error"),
             ("glitch", Faults(glitch_after=after), "glitch")]              # the chip loses its layer and byte order
    if not variants:
        cases = [c for c in cases if c[0] not in ("drop+refuse", "corrupt-nan", "corrupt-short")]
    return pytest.mark.parametrize("faults, kind", [pytest.param(f, k, id=i) for i, f, k in cases])


def chip_per_layer(make_bench, model, faulty: Faults | None = None, **opts) -> tuple[dict, list]:
    """Layer k on chip k (a controller each, so the runner pipelines them); chip 1 gets ``faulty``."""
    benches = [make_bench(faults=faulty if k == 1 else None, seed=k) for k in range(len(model.layers))]
    return {L.index: VisaDevice(benches[L.index].resource, **{**FAST, **opts}) for L in model.layers}, benches


def assert_same_as_reference(path, reference):
    run = open_run(path)
    assert run.complete
    for k in range(len(reference.layers)):
        np.testing.assert_allclose(run.layer(k).values, reference.layers[k], rtol=0, atol=1e-3)
    np.testing.assert_allclose(run.output.values, reference.output, rtol=0, atol=1e-3)


@each_fault(after=150, variants=True)
def test_run_survives_fault(make_bench, mlp_onnx, reference, tmp_path, faults, kind):
    bench = make_bench(faults=faults)
    model = load_model(mlp_onnx)
    # the back-off must outlast the 0.5 s refusal: 10 retries wait 1.5 s in all, 5 only 0.5 s
    devices = chip_devices(bench, model, retries=10 if faults.refuse_s else 5)
    run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH, out=tmp_path / "run.zarr")
    assert bench.clock.fired[kind] == 1
    assert sum(d.stats["retries"] for d in devices.values()) >= 1
    assert_same_as_reference(tmp_path / "run.zarr", reference)
    recorded = open_run(tmp_path / "run.zarr").attrs["devices"]     # the counters as the run left them
    assert [d["stats"] for d in recorded] == [dict(d.stats, reconnects=d.link.reconnects) for d in devices.values()]
    assert sum(len(d.get("faults_survived", [])) for d in recorded) >= 1
    if kind == "glitch":
        assert sum(d.stats["reprograms"] for d in devices.values()) >= 1 or devices[0].link.reconnects >= 1
    if kind in ("drop", "delay"):
        assert devices[0].link.reconnects >= 1


@each_fault(after=50)
def test_pipelined_run_survives_fault_on_one_chip(make_bench, mlp_onnx, reference, tmp_path, faults, kind):
    """A chip per layer, working on successive batches at once; chip 1 fails mid-run and recovers."""
    model = load_model(mlp_onnx)
    devices, benches = chip_per_layer(make_bench, model, faults)
    res = run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH // 2,
                    out=tmp_path / "run.zarr")
    assert res.attrs["pipelined"]
    assert benches[1].clock.fired[kind] == 1 and devices[1].stats["retries"] >= 1
    assert all(d.stats["retries"] == 0 for k, d in devices.items() if k != 1)
    assert_same_as_reference(tmp_path / "run.zarr", reference)


def test_pipelined_run_stops_cleanly_when_a_chip_is_gone_and_resumes(make_bench, mlp_onnx, reference, tmp_path):
    """Chip 1's controller goes away for good: the batches that got past it are recorded,
    the run stops with its error, and a resume on a fresh controller completes the store."""
    model = load_model(mlp_onnx)
    devices, benches = chip_per_layer(make_bench, model, Faults(drop_after=50, refuse_s=600), retries=2)
    out = tmp_path / "run.zarr"
    with pytest.raises(DeviceError, match=rf"{benches[1].resource}.*(failed after 2 retries|cannot reach)"):
        run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH // 2, out=out)
    partial = open_run(out)
    assert not partial.complete and 0 < len(partial.labels) < 60
    for d in devices.values():
        d.close()
    devices, _ = chip_per_layer(make_bench, model)
    run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH // 2, out=out, resume=True)
    assert_same_as_reference(out, reference)


@each_fault(after=150)
def test_streamed_measurements_survive_fault(make_bench, mlp_onnx, reference, tmp_path, faults, kind):
    """A chip taking 16 rows at a time: a layer's measurements are streamed (the next one written while
    this one's replies are read), and a fault with two measurements in flight is survived too."""
    bench = make_bench(faults=faults, max_batch=16)
    model = load_model(mlp_onnx)
    devices = chip_devices(bench, model)
    run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH, out=tmp_path / "run.zarr")
    assert bench.clock.fired[kind] == 1
    assert sum(d.stats["written_behind"] for d in devices.values()) > 20
    assert sum(d.stats["retries"] for d in devices.values()) >= 1
    assert_same_as_reference(tmp_path / "run.zarr", reference)


def ctrl_c_at(bench, commands: int):
    """Press Ctrl-C (SIGINT to this process) once ``bench`` has handled ``commands`` commands."""
    import threading

    def wait_then_press():
        deadline = time.monotonic() + 60
        while bench.clock.count < commands and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=wait_then_press, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_mid_stream_ends_after_the_measurement_in_flight(make_bench):
    """SIGINT while a layer's measurements are streamed: KeyboardInterrupt once the measurement in
    flight is read; nothing is left half-read, so the same connection measures correctly after it."""
    from hwloop.layer import AnalogLayer

    bench = make_bench(max_batch=10, time_scale=5.0)    # 100 us per evaluation: 1 ms per measurement
    rng = np.random.default_rng(0)
    L = AnalogLayer(0, "fc", "Gemm", rng.normal(0, 0.3, (8, 16)).astype(np.float32),
                    np.zeros(8, np.float32), "tanh")
    x = rng.uniform(-1, 1, (1, 4000, 16)).astype(np.float32)       # 400 measurements of 8 commands
    dev = VisaDevice(bench.resource, **FAST)
    dev.program(L)
    presser = ctrl_c_at(bench, bench.clock.count + 8 * 50)
    with pytest.raises(KeyboardInterrupt):
        dev.run(x, repeats=1)
    presser.join()
    assert 50 <= dev.stats["measurements"] < 400 and dev.stats["retries"] == 0
    ideal = np.tanh(x[0, :50] @ L.weight.T)
    np.testing.assert_allclose(dev.run(x[:, :50], repeats=2), np.broadcast_to(ideal, (2, 50, 8)), atol=1e-3)
    dev.close()


def test_ctrl_c_cuts_a_pipelined_run_short_mid_batch(make_bench, mlp_onnx, tmp_path):
    """Ctrl-C during a pipelined run: each chip stops after the measurement in flight, not at the
    end of its batch (its run() is in a stage thread, so the runner tells it); the store resumes."""
    model = load_model(mlp_onnx)
    benches = [make_bench(max_batch=2, time_scale=5.0, seed=k) for k in range(len(model.layers))]
    devices = {L.index: VisaDevice(benches[L.index].resource, **FAST) for L in model.layers}
    out = tmp_path / "run.zarr"

    presser = ctrl_c_at(benches[2], 20 + 8 * 12)   # well into chip 2's first batch (~20 commands to program)
    with pytest.raises(KeyboardInterrupt):     # batches of 20 x 3 repeats: 30 measurements per layer
        run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH, out=out)
    presser.join()
    per_batch = [10] + [30] * (len(model.layers) - 1)
    counts = [d.stats["measurements"] for d in devices.values()]
    assert any(c % m for c, m in zip(counts, per_batch)), counts        # someone stopped mid-batch
    assert all(d.stats["retries"] == 0 for d in devices.values())
    assert not open_run(out).complete
    run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH, out=out, resume=True)
    assert open_run(out).complete


def test_random_faults_of_every_kind(make_bench, mlp_onnx, reference, tmp_path):
    faults = Faults(drop_prob=0.004, corrupt_prob=0.05, error_prob=0.004, glitch_prob=0.004)
    bench = make_bench(faults=faults, seed=3)
    model = load_model(mlp_onnx)
    devices = chip_devices(bench, model, retries=10)
    run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH, out=tmp_path / "run.zarr")
    assert sum(bench.clock.fired.values()) >= 3
    assert_same_as_reference(tmp_path / "run.zarr", reference)


def test_retries_exhausted_stop_cleanly_and_resume(make_bench, mlp_onnx, reference, tmp_path):
    """The controller goes away for good mid-run: DeviceError naming it; the store resumes on a new one."""
    bench = make_bench(faults=Faults(drop_after=150, refuse_s=600))
    model = load_model(mlp_onnx)
    devices = chip_devices(bench, model, retries=2)
    out = tmp_path / "run.zarr"
    with pytest.raises(DeviceError, match=rf"{bench.resource}.*(failed after 2 retries|cannot reach)"):
        run_model(model, DATA, devices=devices, repeats=REPEATS, seed=0, batch_size=BATCH, out=out)
    partial = open_run(out)
    assert not partial.complete and 0 < len(partial.labels) < 60
    fresh = make_bench()
    run_model(model, DATA, devices=chip_devices(fresh, model), repeats=REPEATS, seed=0, batch_size=BATCH,
              out=out, resume=True)
    assert_same_as_reference(out, reference)


def _bench_file(tmp_path, benches) -> str:
    """One chip for every layer, or (several benches) layer k on chip k: the runner then pipelines them."""
    path = tmp_path / "bench.yaml"
    text = "devices:\n" + "".join(f"  chip{k}:\n    resource: \"{b.resource}\"\n    timeout_ms: 2000\n"
                                  for k, b in enumerate(benches))
    text += "default: chip0\n" if len(benches) == 1 else \
        "layers:\n" + "".join(f"  {k}: chip{k}\n" for k in range(len(benches)))
    path.write_text(text)
    return str(path)


def _make_benches(make_bench, n: int) -> list:
    """n controllers taking about a second for the run (the programming time of a layer switch, or
    the measurements of every layer at once)."""
    return [make_bench(time_scale=0.2 if n == 1 else 1.0, seed=k) for k in range(n)]


CHIPS = pytest.mark.parametrize("n_chips", [1, 4], ids=["one-chip", "four-chips-pipelined"])


@pytest.mark.slow
@CHIPS
def test_sigkill_client_mid_run_then_resume(make_bench, mlp_onnx, reference, tmp_path, n_chips):
    """SIGKILL of a real ``hwloop run --bench`` subprocess, then ``--resume`` (in this process, the same
    ``hwloop.cli.main``): nothing lost or duplicated."""
    benches = _make_benches(make_bench, n_chips)
    bench = benches[-1]
    bf = _bench_file(tmp_path, benches)
    out = tmp_path / "run.zarr"
    cmd = [sys.executable, "-m", "hwloop", "run", str(mlp_onnx), "--bench", bf, "--data", DATA,
           "--repeats", str(REPEATS), "--batch-size", "5", "--seed", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while bench.clock.count < 400 // n_chips and time.monotonic() - t0 < 60 and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = open_run(out)
    assert not partial.complete
    assert main(cmd[3:] + ["--resume"]) == 0          # the resume in this process: the same CLI main
    assert_same_as_reference(out, reference)
    assert open_run(out).attrs["pipelined"] == (n_chips > 1)  # provenance kept, and says how it ran


def test_bad_bench_file_errors_through_cli(tmp_path, mlp_onnx):
    path = tmp_path / "b.yaml"
    path.write_text("devices:\n  chip:\n    resource: \"TCPIP::127.0.0.1::1::SOCKET\"\n    retries: 0\n"
                    "    timeout_ms: 200\ndefault: chip\n")
    r = hwloop("run", mlp_onnx, "--bench", path, "--out", tmp_path / "r.zarr", timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and f"{path}:2: device 'chip': cannot reach bench controller " \
        "TCPIP::127.0.0.1::1::SOCKET" in r.stderr
    assert not (tmp_path / "r.zarr").exists()


def test_persistent_error_names_the_command(make_bench):
    """A fault that does not go away: the careful retry pins it on the command that causes it."""
    from hwloop.layer import AnalogLayer

    bench = make_bench()
    L = AnalogLayer(0, "fc", "Gemm", np.full((4, 8), 0.1, np.float32), np.zeros(4, np.float32), "linear")
    dev = VisaDevice(bench.resource, retries=1, **{k: v for k, v in FAST.items() if k != "timeout_ms"})
    dev.program(L)
    bench.spec.max_repeats = 10            # the controller now refuses SAMP:COUN 20 (-222)
    with pytest.raises(DeviceError, match=r'failed after 1 retries: SAMP:COUN: -222,"Data out of range"'):
        dev.run(np.zeros((1, 5, 8), np.float32), repeats=20)
    assert any("measurement (INP, SAMP:COUN, INIT" in f for f in dev.describe()["faults_survived"])
    dev.close()


@pytest.mark.slow
@CHIPS
def test_ctrl_c_ends_between_transfers_and_resumes(make_bench, mlp_onnx, reference, tmp_path, n_chips):
    """SIGINT during a run: exit 130 after the transfer in flight, store intact, --resume completes it."""
    benches = _make_benches(make_bench, n_chips)
    bench = benches[-1]
    out = tmp_path / "run.zarr"
    cmd = [sys.executable, "-m", "hwloop", "run", str(mlp_onnx), "--bench", _bench_file(tmp_path, benches),
           "--data", DATA, "--repeats", str(REPEATS), "--batch-size", "5", "--seed", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while bench.clock.count < 300 // n_chips and time.monotonic() - t0 < 60 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not open_run(out).complete and open_run(out).attrs["pipelined"] == (n_chips > 1)
    assert main(cmd[3:] + ["--resume"]) == 0          # the resume in this process: the same CLI main
    assert_same_as_reference(out, reference)
