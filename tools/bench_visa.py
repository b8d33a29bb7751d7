"""Benchmark: a model run entirely on simulated bench controllers, against the in-process emulator.

MLP 784-100-100-10 (sigmoid, sigmoid, linear; random weights), 1,000 samples
(MNIST test images when ../shared/data/mnist.npz exists, else uniform [0, 1])
x 100 repeats, device profile ``semenova`` (override with --profile).  Measured in
the same run:
  emulator   run_model with Emulator(profile) for every layer, in process, with torch's
             default threads and with one thread (as each simulated controller uses); the
             throughput goal is judged against the faster of the two
  bench      run_model with a VisaDevice per layer, each talking through pyvisa
             over TCP to its own ``hwloop bench serve`` subprocess (same profile,
             a 1024x128 array so each layer is one tile, --time-scale 0: the
             simulated chip takes no extra time, so only transport and overhead show),
             pipelined as run_model does by default (layer k+1's chip works on batch b
             while layer k's measures batch b+1), and once more with pipeline=False
  raw        a plain socket client/server pair (server in a subprocess) moving the
             same block sizes in the same order (inputs out, results back)
Prints the bench's throughput relative to the emulator (goal >= 0.5x) and the
achieved transfer rate in MB/s next to the raw socket's.

Fairness: on a shared machine, OpenMP workers that spin-wait made the emulator 4-5x
slower with 2 threads than with 1 while another process was busy; hwloop sets
OMP_WAIT_POLICY=PASSIVE (unless set) when it is imported before torch, as here.  The
other processes' CPU load during the emulator timings is printed, so a run taken on
a busy machine shows as one.

    .venv/bin/python tools/bench_visa.py [--samples 1000] [--repeats 100] [--profile semenova] [--time-scale 0]

--time-scale 1 makes the simulated chips take the manual's time (20 us per
evaluation); the emulator comparison is then meaningless, but the pipelined /
sequential ratio shows what overlapping the chips buys on a real bench.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hwloop  # noqa: E402,F401  (before torch: sets OpenMP's wait policy, see above)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from exporters.models import MLP, seeded  # noqa: E402
from exporters.torch_onnx import export_torch  # noqa: E402
from hwloop.bench import VisaDevice  # noqa: E402
from hwloop.bench.driver import chunks_for  # noqa: E402
from hwloop.data import Dataset, load_data, shared_mnist  # noqa: E402
from hwloop.devices import Emulator  # noqa: E402
from hwloop.graph import load_model  # noqa: E402
from hwloop.profiles import load_profile  # noqa: E402
from hwloop.runner import default_batch_size, run_model  # noqa: E402

SIZES, ACTS = (784, 100, 100, 10), ("sigmoid", "sigmoid", "linear")
CHIP = "max_inputs: 1024\nmax_outputs: 128\nmax_batch: 4096\nmax_repeats: 1000\n"


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"at (\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    return proc, m.group(1)


RAW_SERVER = r"""
import socket, struct, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = bytearray(1 << 26); view = memoryview(buf); reply = bytes(1 << 26)
while True:
    head = c.recv(16, socket.MSG_WAITALL)
    if len(head) < 16: break
    n_in, n_out = struct.unpack("<QQ", head)
    got = 0
    while got < n_in:
        got += c.recv_into(view[: min(len(buf), n_in - got)])
    c.sendall(reply[:n_out])
"""


def raw_transfer(sizes: list[tuple[int, int]]) -> float:
    """Seconds a plain socket pair takes to move the same (out, back) block sizes in order."""
    proc = subprocess.Popen([sys.executable, "-c", RAW_SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = bytes(max(s for s, _ in sizes))
    buf = bytearray(max(r for _, r in sizes))
    view = memoryview(buf)
    t = time.perf_counter()
    for n_out, n_back in sizes:
        c.sendall(struct.pack("<QQ", n_out, n_back) + out[:n_out])
        got = 0
        while got < n_back:
            got += c.recv_into(view[got:n_back])
    dt = time.perf_counter() - t
    c.close()
    proc.wait(10)
    return dt


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU-seconds of the whole machine, of this process) so far; None without /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    t = os.times()
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def transfers(model, n: int, batch: int, repeats: int) -> list[tuple[int, int]]:
    """(bytes sent, bytes fetched) of every measurement the bench run makes, from the driver's own chunking."""
    sizes = []
    for b0 in range(0, n, batch):
        b = min(batch, n - b0)
        for L in model.layers:
            rows, k = (b, repeats) if L.index == 0 else (b * repeats, 1)
            for rs, ks in chunks_for(rows, k, L.n_out, 4096, 1000, 32 << 20):
                r, kk = rs.stop - rs.start, ks.stop - ks.start
                sizes.append((4 * r * L.n_in, 4 * kk * r * L.n_out))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--profile", default="semenova")
    ap.add_argument("--trials", type=int, default=3, help="interleaved trials; the best of each is reported")
    ap.add_argument("--time-scale", type=float, default=0.0, help="simulated chips' time, 1 = the manual's")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hwloop-bench-visa-"))
    with seeded(0):
        net = MLP(SIZES, ACTS)
    onnx_path = export_torch(net.eval(), tmp / "mlp.onnx", torch.zeros(2, 784))
    model = load_model(onnx_path)
    mnist = shared_mnist()
    if mnist:
        ds = load_data(f"mnist:{mnist}@{a.samples}")
    else:
        rng = np.random.default_rng(0)
        ds = Dataset("uniform", rng.uniform(0, 1, (a.samples, 784)).astype(np.float32),
                     rng.integers(0, 10, a.samples), 10)
    profile = load_profile(a.profile)
    batch = default_batch_size(model, a.repeats, len(ds))
    (tmp / "chip.yaml").write_text(CHIP)

    servers = [start_server([sys.executable, "-m", "hwloop", "bench", "serve", "--port", "0", "--profile",
                             a.profile, "--chip", str(tmp / "chip.yaml"), "--time-scale", str(a.time_scale), "--seed", str(k)])
               for k in range(len(model.layers))]
    try:
        devices = {L.index: VisaDevice(servers[L.index][1], timeout_ms=30000) for L in model.layers}
        emus = {L.index: Emulator(profile) for L in model.layers}
        run_model(model, ds.head(min(50, len(ds))), devices=emus, repeats=a.repeats, batch_size=batch)  # warm-up
        t_emu, t_emu1, t_bench, t_seq = [], [], [], []
        threads = torch.get_num_threads()
        others = [0.0, 0.0]                # CPU-s other processes used during the emulator timings, wall s
        for _ in range(a.trials):          # interleaved, best of each: the machine's load varies
            for n, times in ((threads, t_emu), (1, t_emu1)):   # 1: as each simulated controller has
                torch.set_num_threads(n)
                c0, t = cpu_seconds(), time.perf_counter()
                emu = run_model(model, ds, devices=emus, repeats=a.repeats, seed=0, batch_size=batch)
                times.append(time.perf_counter() - t)
                c1 = cpu_seconds()
                if c0 and c1:
                    others[0] += (c1[0] - c0[0]) - (c1[1] - c0[1])
                    others[1] += times[-1]
            torch.set_num_threads(threads)
            for pipeline, times in ((None, t_bench), (False, t_seq)):
                t = time.perf_counter()
                chip = run_model(model, ds, devices=devices, repeats=a.repeats, seed=0, batch_size=batch,
                                 pipeline=pipeline)
                times.append(time.perf_counter() - t)
                if pipeline is None:
                    assert chip.attrs["pipelined"], "run_model did not pipeline the bench run"
        t_emu, t_emu1, t_bench, t_seq = min(t_emu), min(t_emu1), min(t_bench), min(t_seq)
        stats = [d.describe()["stats"] for d in devices.values()]
        for d in devices.values():
            d.close()
    finally:
        compute = []
        for proc, _ in servers:
            proc.terminate()
            err = proc.communicate(timeout=10)[1]
            m = re.search(r"chip compute ([0-9.]+) s", err)
            compute.append(float(m.group(1)) if m else float("nan"))
    sizes = transfers(model, len(ds), batch, a.repeats)
    moved = sum(s["bytes_sent"] + s["bytes_fetched"] for s in stats) // (2 * a.trials)
    assert moved == sum(o + b for o, b in sizes), "transfer plan differs from what the driver did"
    t_raw = min(raw_transfer(sizes) for _ in range(a.trials))
    mb = moved / 1e6
    print(f"MLP {'-'.join(map(str, SIZES))}, {len(ds)} samples ({ds.name.split(':')[0]}) x {a.repeats} repeats, "
          f"profile {a.profile}, batch {batch}, {len(sizes)} measurements, {mb:.1f} MB moved")
    load = f"{max(others[0], 0.0) / others[1]:.2f} of {os.cpu_count()} cores" if others[1] else "unknown"
    best, best_n = min((t_emu, threads), (t_emu1, 1))
    print(f"  emulator in process : {t_emu:7.3f} s with {threads} torch threads, {t_emu1:.3f} s with 1; "
          f"accuracy {emu.accuracy.mean():.4f}; other processes' load meanwhile {load}")
    print(f"  simulated bench     : {t_bench:7.3f} s pipelined, {t_seq:.3f} s with pipeline=False "
          f"({t_seq / t_bench:.2f}x); accuracy {chip.accuracy.mean():.4f}")
    print(f"  throughput          : {best / t_bench:.2f}x the emulator at its best ({best_n} thread"
          f"{'s' if best_n > 1 else ''})   (goal >= 0.5x); {t_emu / t_bench:.2f}x with {threads}, "
          f"{t_emu1 / t_bench:.2f}x with 1")
    chip_s = sum(compute) / (2 * a.trials)
    print(f"  simulated chips' own compute (physics + ADC, reported by the servers): {chip_s:.3f} s per run, "
          "summed over the chips")
    extra = t_seq - chip_s
    print(f"  transfer rate       : {mb / t_bench:7.1f} MB/s over the whole pipelined run; {mb / extra:.1f} MB/s over "
          f"the sequential run's time beyond the chips' compute ({extra:.3f} s: transport, SCPI, checks, runner)")
    print(f"  raw socket, same blocks: {mb / t_raw:7.1f} MB/s ({t_raw:.3f} s)")
    print(f"  (best of {a.trials} interleaved trials; the simulated chips run with --time-scale {a.time_scale:g} "
          "and one torch thread each)")
    print(f"  retries {sum(s['retries'] for s in stats)}, clipped {sum(s['clipped'] for s in stats)}")


if __name__ == "__main__":
    main()
