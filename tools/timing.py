"""Timing shared by the benchmarks: the fastest of several calls, contenders taking turns; their options."""

from __future__ import annotations

import argparse
import time
from typing import Callable


def options(doc: str, **defaults: object) -> argparse.Namespace:
    """The command line of a benchmark: ``--name`` per keyword (``_`` -> ``-``), typed like its default.

    A default may be ``(value, help)``.  The parser's description is the first line of ``doc``.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        value, text = default if isinstance(default, tuple) else (default, None)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, help=text)
    return parser.parse_args()


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
