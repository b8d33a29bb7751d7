"""A Dask client for work spread over processes: a local cluster of N workers, or an existing scheduler.

Shared by the walking sweeps and the check matrices, so both start, connect
and fail the same way (one ``HwloopError`` line when no cluster can be had).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from .errors import HwloopError


#: LocalCluster options for no dashboard: the scheduler's HTTP server starts even so (``dashboard_address=None``
#: only means port 8787, and "Port 8787 is already in use" once two clusters run), so on a free loopback port
NO_DASHBOARD = {"dashboard_address": "127.0.0.1:0", "scheduler_kwargs": {"dashboard": False}}


def check_workers(workers: int | None) -> None:
    """One line for a local cluster of no workers (``--workers 0``; None means no Dask)."""
    if workers is not None and workers < 1:
        raise HwloopError(f"--workers {workers}: give at least 1 Dask worker (or no --workers to run here)")


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator["object"]:
    """``scheduler`` (tcp://HOST:PORT) if given, else a local cluster of ``workers`` single-threaded processes."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    environ = dict(os.environ)
    try:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, **NO_DASHBOARD)
            client = Client(cluster)
    except Exception as e:
        if cluster is not None:
            cluster.close()
        raise HwloopError(f"Dask {scheduler or 'local cluster'}: cannot start or connect ({e})") from None
    finally:
        # the nanny sets OMP_NUM_THREADS=1 (and more) for its workers in *this* process's environment:
        # without this, every process started later from here (a run, a test's subprocess) ran on one thread
        os.environ.clear()
        os.environ.update(environ)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
