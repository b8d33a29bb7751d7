"""Benchmark: the simulated controller against abusive clients, with references from the same run.

Prints, for a controller in this process (``SimulatedBench``, instantaneous timing):
- the time to take an overlong line of N MiB (refused with -223, then ``*IDN?``
  answered) against the time to take the same number of bytes as valid
  ``INP`` blocks (the reference); a ratio near 1 or below means a long line costs
  no more than ordinary traffic (before: 8.7 s for 64 MiB, every read rescanning);
- the growth of this process's RSS while a client holds a header claiming
  ``#9999999999`` bytes (before: +0.96 GiB) and after 300 distinct 1 MiB headers
  (before: +256 MiB).

    .venv/bin/python tools/bench_controller_abuse.py [--mib 64]
"""

from __future__ import annotations

import argparse
import socket
import time

import numpy as np
import psutil

from hwloop.bench import ChipSpec, SimulatedBench, scpi

MiB = 1 << 20


def _answer(s: socket.socket, text: bytes) -> bytes:
    s.sendall(text)
    out = b""
    while not out.endswith(b"\n"):
        out += s.recv(1 << 16)
    return out


def _session(bench: SimulatedBench) -> socket.socket:
    bench.wait_disconnected(5)
    time.sleep(0.1)
    return socket.create_connection((bench.host, bench.port), timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=64, help="size of the long line and of the reference traffic")
    args = ap.parse_args()
    bench = SimulatedBench(spec=ChipSpec(time_scale=0.0)).start()
    rss = psutil.Process().memory_info
    try:
        s = _session(bench)                       # reference: the same bytes as valid 4 MiB input blocks
        rows = (4 * MiB) // (4 * 256)
        block = b"INP " + scpi.encode_block(np.zeros((rows, 256), np.float32), "NORM") + b"\n"
        _answer(s, b"LAY:SHAP 64,256\n*IDN?\n")
        t = time.perf_counter()
        for _ in range(args.mib // 4):
            s.sendall(block)
        _answer(s, b"*IDN?\n")
        ref = time.perf_counter() - t
        s.close()

        s = _session(bench)
        line = b"A" * MiB
        t = time.perf_counter()
        for _ in range(args.mib):
            s.sendall(line)
        _answer(s, b"\n*IDN?\n")
        long_line = time.perf_counter() - t
        s.close()
        print(f"overlong line of {args.mib} MiB: {long_line:.3f} s; same bytes as INP blocks: {ref:.3f} s; "
              f"ratio {long_line / ref:.2f}")

        s = _session(bench)
        before = rss().rss
        s.sendall(b"WEIG #9999999999" + b"\0" * MiB)
        time.sleep(0.5)
        print(f"header claiming 9999999999 bytes: RSS +{(rss().rss - before) / MiB:.1f} MiB")
        s.close()

        s = _session(bench)
        before = rss().rss
        for k in range(300):       # each is refused as an overlong line (-223), not looked up
            s.sendall(b"A" * MiB + "".join(chr(65 + (k // 26 ** i) % 26) for i in range(3)).encode() + b"?\n")
        _answer(s, b"*IDN?\n")
        print(f"300 distinct 1 MiB headers: RSS +{(rss().rss - before) / MiB:.1f} MiB, "
              f"headers remembered {len(scpi._FOUND)}")
        s.close()
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
