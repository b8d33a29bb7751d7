"""Timing shared by the benchmarks: the fastest of several calls, contenders taking turns."""

from __future__ import annotations

import time
from typing import Callable


def best(fns: dict[str, Callable[[], object]], reps: int, block: int = 5) -> dict[str, float]:
    """Fastest of ``reps`` calls of each function, in seconds, after one warm-up call each.

    The functions take turns in blocks of ``block`` calls, so a burst of load on this (shared)
    machine hits all of them alike, while the thread pools of the one before (onnxruntime's and
    OpenMP's workers spin for a while after a run) have calmed down before the next one starts.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, -(-reps // block))):
        for name, fn in fns.items():
            time.sleep(0.05)
            for _ in range(block):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}
